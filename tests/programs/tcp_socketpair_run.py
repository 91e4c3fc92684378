"""Runs CPython's regression tests (`python -m test ARGS...`) with
socket.socketpair() returning a connected pair of TCP sockets on 127.0.0.1
instead of AF_UNIX ones, so that tests built on socketpair (test_selectors,
for instance) exercise TCP connections, which doorway accelerates.
An explicit AF_UNIX request still gets a Unix pair.

  python3 tcp_socketpair_run.py test_selectors -v ...
"""
import runpy
import socket
import sys

_unix_socketpair = socket.socketpair


def tcp_socketpair(family=None, type=socket.SOCK_STREAM, proto=0):
    if family == socket.AF_UNIX or type != socket.SOCK_STREAM:
        return _unix_socketpair(socket.AF_UNIX if family is None else family, type, proto)
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family or socket.AF_INET, type, proto) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = socket.socket(family or socket.AF_INET, type, proto)
        client.connect(listener.getsockname()[:2])
        server, _ = listener.accept()
    return server, client


socket.socketpair = tcp_socketpair
sys.argv = ["-m test"] + sys.argv[1:]
runpy.run_module("test", run_name="__main__", alter_sys=True)
