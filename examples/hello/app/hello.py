"""galley's example app: shows where and as whom it runs, and reads a file galley copied."""
import os
import platform
import sys
from pathlib import Path

message = (Path(__file__).parent / "message.txt").read_text().strip()
print(os.environ.get("GREETING", "hello"))
print(f"python {platform.python_version()} on {platform.machine()}, uid {os.getuid()}, cwd {os.getcwd()}")
print(f"app file says: {message}")
if len(sys.argv) > 1:
    print("args:", " ".join(sys.argv[1:]))
