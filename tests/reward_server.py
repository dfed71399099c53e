"""A reward server for the trainer's tests: FlowGRPO's pickle protocol, scores from the digits reward judge.

Usage: reward_server.py PORT HOLD_AT STATE_DIR
    PORT      port on 127.0.0.1 (0 = any free port); the port taken is written to STATE_DIR/port
    HOLD_AT   the request number (1-based) at which the server stops answering: it writes
              STATE_DIR/holding and never replies, so that the test can kill it mid-request (0 = never)

Scores are the embedded reward judge's probability of the prompted digit for the JPEG-decoded
images: deterministic, so a run scored here is reproducible bitwise.
"""

import io
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
torch.set_num_threads(1)
lock = threading.Lock()
count = {"requests": 0}


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
        request = pickle.loads(body)
        images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")) for jpeg in request["images"]])
        scores, _ = digits.reward_fn(torch.from_numpy(images).float().div(255)[:, None], request["prompts"])
        payload = pickle.dumps({"scores": scores["avg"].tolist()})
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
(state / "port").write_text(str(server.server_address[1]))
server.serve_forever()
