#!/usr/bin/env python3
"""A real gRPC server and client (grpcio) for fusebox's tests: no generated code, raw bytes.

serve [--tls CERT KEY] SCRIPT...
    Serves on 127.0.0.1 (a free port), prints "port N", then one "hit METHOD LEFT" line per
    call (LEFT: the seconds left of the deadline the call came with, or "none").
    The n-th call gets the n-th SCRIPT entry (the last repeats): a gRPC status name in
    lower case ("ok", "unavailable", ...), answered trailers-only by /fusebox.Test/Unary, or
    after one message, in the trailers, by /fusebox.Test/Stream; or "stall": no answer for
    60 s (until the client gives up); or "long": /fusebox.Test/Stream sends a message, then a
    second one 3 s later, and ends with "ok" (a long, healthy stream).

call TARGET [--method M] [--ca FILE] [--count N] [--timeout S]
    Makes N calls (one after another) to TARGET (host:port) on a fresh channel; with --ca, over
    TLS trusting FILE. The environment's https_proxy/grpc_proxy apply (gRPC's own CONNECT).
    Prints one line per call: "<status name> <details>".
"""
import argparse
import sys
import threading
import time
from concurrent import futures

import grpc

UNARY = "/fusebox.Test/Unary"
STREAM = "/fusebox.Test/Stream"


STALL = "stall"
LONG = "long"


def code_named(name):
    if name in (STALL, LONG):
        return name
    return getattr(grpc.StatusCode, name.upper().replace("-", "_"))


def serve(args):
    script = [code_named(n) for n in args.script]
    lock = threading.Lock()
    calls = [0]

    def next_code(method, context):
        # The deadline the call arrived with (its grpc-timeout), in seconds, or "none".
        left = context.time_remaining()
        left = "none" if left is None else f"{left:.3f}"
        with lock:
            n = calls[0]
            calls[0] += 1
            print(f"hit {method} {left}", flush=True)
        return script[min(n, len(script) - 1)]

    def unary(request, context):
        code = next_code(UNARY, context)
        if code == STALL:
            time.sleep(60)
            code = grpc.StatusCode.OK
        if code != grpc.StatusCode.OK:
            context.abort(code, f"scripted {code.name}")
        return b"pong:" + request

    def stream(request, context):
        code = next_code(STREAM, context)
        yield b"first"
        if code == LONG:
            time.sleep(3)
            yield b"second"
            return
        if code != grpc.StatusCode.OK:
            context.abort(code, f"scripted {code.name} after a message")

    handler = grpc.method_handlers_generic_handler(
        "fusebox.Test",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    if args.tls:
        cert, key = (open(p, "rb").read() for p in args.tls)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"port {port}", flush=True)
    # Until the test closes stdin (or dies).
    sys.stdin.read()
    server.stop(0)


def call(args):
    if args.ca:
        credentials = grpc.ssl_channel_credentials(open(args.ca, "rb").read())
        channel = grpc.secure_channel(args.target, credentials)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        for _ in range(args.count):
            try:
                if args.method == STREAM:
                    rpc = channel.unary_stream(args.method)
                    got = list(rpc(b"ping", timeout=args.timeout))
                    print(f"ok {len(got)} message(s)", flush=True)
                else:
                    rpc = channel.unary_unary(args.method)
                    reply = rpc(b"ping", timeout=args.timeout)
                    print(f"ok {reply.decode()}", flush=True)
            except grpc.RpcError as error:
                name = error.code().name.lower().replace("_", "-")
                print(f"{name} {error.details()}", flush=True)


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    s.add_argument("script", nargs="+")
    c = sub.add_parser("call")
    c.add_argument("target")
    c.add_argument("--method", default=UNARY)
    c.add_argument("--ca")
    c.add_argument("--count", type=int, default=1)
    c.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    serve(args) if args.command == "serve" else call(args)


if __name__ == "__main__":
    main()
