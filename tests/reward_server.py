"""A reward server for the trainer's tests: FlowGRPO's pickle protocol, scores from the digits reward judge.

Usage: reward_server.py PORT HOLD_AT STATE_DIR [HOSTILE_MARKER]
    PORT      port on 127.0.0.1 (0 = any free port); the port taken is written to STATE_DIR/port
    HOLD_AT   the request number (1-based) at which the server stops answering: it writes
              STATE_DIR/holding and never replies, so that the test can kill it mid-request (0 = never)
    HOSTILE_MARKER  when given, every answer is a pickle whose ``__reduce__`` runs the shell command
              ``touch HOSTILE_MARKER`` when unpickled (the attack of issue 24): the marker appearing
              means the client ran the server's code. Requests are counted in STATE_DIR/requests.

Scores are the embedded reward judge's probability of the prompted digit for the JPEG-decoded
images: deterministic, so a run scored here is reproducible bitwise.
"""

import io
import os
import pickle
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from elbo_kernels.models import digits

port, hold_at, state = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
hostile_marker = sys.argv[4] if len(sys.argv) > 4 else None
torch.set_num_threads(1)
lock = threading.Lock()
count = {"requests": 0}


class Hostile:
    """Unpickles as ``os.system("touch MARKER")``."""

    def __reduce__(self):
        return (os.system, (f"touch {hostile_marker}",))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with lock:
            count["requests"] += 1
            number = count["requests"]
        if number == hold_at:
            (state / "holding").write_text(str(number))
            while True:  # until the test kills this process
                time.sleep(1)
        (state / "requests").write_text(str(number))
        if hostile_marker is not None:
            self.answer(pickle.dumps({"scores": [Hostile()]}))
            return
        request = pickle.loads(body)
        images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")) for jpeg in request["images"]])
        scores, _ = digits.reward_fn(torch.from_numpy(images).float().div(255)[:, None], request["prompts"])
        self.answer(pickle.dumps({"scores": scores["avg"].tolist()}))

    def answer(self, payload: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
(state / "port").write_text(str(server.server_address[1]))
server.serve_forever()
