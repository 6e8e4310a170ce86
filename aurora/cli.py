"""The ``aurora`` command line."""
import argparse
import sys


def cmd_info(args):
    import platform

    import aurora
    from aurora import _native

    lines = [
        ("aurora", aurora.__version__),
        ("python", "%s (%s)" % (platform.python_version(), sys.executable)),
        ("platform", "%s %s" % (platform.system(), platform.machine())),
        ("crc32c backend", aurora.crc32c_backend),
        ("build", _native.build_info()),
        ("format version", _native.FORMAT_VERSION),
        ("page size default", "%d bytes" % _native.PAGE_SIZE_DEFAULT),
        ("segment size default", "%d bytes" % _native.SEGMENT_SIZE_BYTES_DEFAULT),
        ("record header", "%d bytes" % _native.RECORD_HEADER_SIZE),
        ("batch header", "%d bytes" % _native.BATCH_HEADER_SIZE),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print("%-*s  %s" % (width, key, value))
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="aurora", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    info = sub.add_parser("info", help="print version, CRC backend, build flags and defaults")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
