"""The ``aurora`` command line."""
import argparse
import json
import logging
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


def cmd_node_serve(args):
    from aurora.node.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(args.data, args.listen, args.node_id, args.az, args.log_file_bytes, args.parent_pid)


def cmd_node_status(args):
    from aurora.client import NodeClient

    with NodeClient(args.connect, timeout=args.timeout) as client:
        status = client.status()
    if args.json:
        print(json.dumps(status, indent=1, sort_keys=True))
        return 0
    print("node %s  az %s  pid %s" % (status["node_id"], status["az"], status["pid"]))
    for volume_id, volume in sorted(status["volumes"].items()):
        print("volume %s  epoch %d" % (volume_id, volume["volume_epoch"]))
    header = ("volume", "pg", "SCL", "materialized", "LWM", "log bytes", "pages", "versions",
              "m.epoch", "scrub", "state")
    rows = []
    for seg in status["segments"]:
        scrub = seg["scrub"]
        rows.append((seg["volume_id"], seg["pg"], seg["scl"], seg["materialized_lsn"], seg["lwm"],
                     seg["log_bytes"], seg["page_count"], seg["page_versions"], seg["membership_epoch"],
                     "%d passes, %d damage" % (scrub["passes"], scrub["damage"]),
                     "NEEDS REPAIR" if seg["needs_repair"] else ("holes" if seg["holes"] else "ok")))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)))
    for seg in status["segments"]:
        for line in seg["corruption"]:
            print("volume %d PG %d: %s" % (seg["volume_id"], seg["pg"], line))
    return 0


def cmd_demo(args):
    from aurora import demo

    return demo.demo(args)


def build_parser():
    parser = argparse.ArgumentParser(prog="aurora", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    info = sub.add_parser("info", help="print version, CRC backend, build flags and defaults")
    info.set_defaults(func=cmd_info)

    demo_parser = sub.add_parser("demo", help="run the bookstore on an embedded 6-node fleet, "
                                               "kill an AZ and the writer, and check every order")
    from aurora.demo import add_arguments
    add_arguments(demo_parser)
    demo_parser.set_defaults(func=cmd_demo)

    node = sub.add_parser("node", help="run or inspect a storage node")
    node_sub = node.add_subparsers(dest="node_command", metavar="NODE_COMMAND")
    node_sub.required = True
    serve = node_sub.add_parser("serve", help="run one storage node in the foreground")
    serve.add_argument("--data", required=True, help="data directory (created if missing)")
    serve.add_argument("--listen", required=True, help="unix:PATH or tcp:HOST:PORT")
    serve.add_argument("--node-id", required=True)
    serve.add_argument("--az", required=True, help="failure domain of this node")
    serve.add_argument("--log-file-bytes", type=int, default=None,
                       help="size of each preallocated log file (default 64 MiB)")
    serve.add_argument("--parent-pid", type=int, default=None,
                       help="shut down cleanly when this process (the one that started the node) is gone")
    serve.set_defaults(func=cmd_node_serve)
    status = node_sub.add_parser("status", help="print a node's segments and epochs")
    status.add_argument("--connect", required=True, help="unix:PATH or tcp:HOST:PORT")
    status.add_argument("--timeout", type=float, default=5.0)
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.set_defaults(func=cmd_node_status)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
