"""Exit 0 if a MongoDB wire-protocol server answers `hello` and `ping` at the given URI.

Usage: ping.py URI [timeout_ms]. Used by deploy/mongo.sh; prints the server's hello summary.
"""
import sys

from pymongo import MongoClient

uri = sys.argv[1]
timeout_ms = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
client = MongoClient(uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)
try:
    hello = client.admin.command("hello")
    client.admin.command("ping")
    print(
        "maxWireVersion=%s setName=%s isWritablePrimary=%s"
        % (hello.get("maxWireVersion"), hello.get("setName"), hello.get("isWritablePrimary"))
    )
except Exception as exc:  # any failure means "not answering yet"
    print("not answering: %s" % exc, file=sys.stderr)
    sys.exit(1)
finally:
    client.close()
