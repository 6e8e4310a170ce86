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


def _tls_config(args):
    from aurora.tls import TLSConfig

    return TLSConfig.from_options(args.tls_ca, args.tls_cert, args.tls_key)


def cmd_node_serve(args):
    from aurora.node.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return serve(args.data, args.listen, args.node_id, args.az, args.log_file_bytes, args.parent_pid,
                 tls=_tls_config(args))


def cmd_node_status(args):
    from aurora.client import NodeClient

    with NodeClient(args.connect, timeout=args.timeout, tls=_tls_config(args)) as client:
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


def cmd_tls_make_test_certs(args):
    from aurora.tls import make_test_certificates

    certs = make_test_certificates(args.directory, hosts=args.host or ("127.0.0.1", "localhost", "::1"),
                                   days=args.days)
    print("CA           %s\nnode         %s  key %s\nclient       %s  key %s"
          % (certs.ca_file, certs.node_cert, certs.node_key, certs.client_cert, certs.client_key))
    return 0


def add_tls_arguments(parser, role):
    parser.add_argument("--tls-ca", metavar="PEM", help="the cluster CA certificate: TLS on tcp: "
                        "addresses, with %s (give all three --tls-* or none)" % role)
    parser.add_argument("--tls-cert", metavar="PEM", help="this party's certificate, signed by the cluster CA")
    parser.add_argument("--tls-key", metavar="PEM", help="this party's private key")


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
    add_tls_arguments(serve, "client certificates required")
    serve.set_defaults(func=cmd_node_serve)
    status = node_sub.add_parser("status", help="print a node's segments and epochs")
    status.add_argument("--connect", required=True, help="unix:PATH or tcp:HOST:PORT")
    status.add_argument("--timeout", type=float, default=5.0)
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    add_tls_arguments(status, "the node's certificate checked")
    status.set_defaults(func=cmd_node_status)

    tls = sub.add_parser("tls", help="certificates for TLS between writers and nodes")
    tls_sub = tls.add_subparsers(dest="tls_command", metavar="TLS_COMMAND")
    tls_sub.required = True
    make = tls_sub.add_parser("make-test-certs", help="a throw-away CA, node and client certificate for "
                              "trials and tests (docs/node.md shows how to make real ones)")
    make.add_argument("directory")
    make.add_argument("--host", action="append", help="a name or IP the node certificate names "
                      "(repeat; default 127.0.0.1, localhost, ::1)")
    make.add_argument("--days", type=int, default=30)
    make.set_defaults(func=cmd_tls_make_test_certs)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
