"""The same TPO queries through two hone servers: one on its local engine, one whose policy
runs on an OpenAI-compatible server (`hone serve --remote`). Prints a Markdown row per server:
queries, wall seconds, compute units, tokens generated, ms per token.

    python3 scripts/reference/bench_remote.py LOCAL_PORT REMOTE_PORT

docs/PERFORMANCE.md ("Remote policies") gives the servers' commands.
"""
import json, time, urllib.request, sys
prompts = ["Explain what a hash map is in two sentences.",
           "Give three tips for writing clear emails.",
           "What causes the seasons on Earth? Answer briefly.",
           "Describe a cat to someone who has never seen one.",
           "Why is the sky blue? Keep it short."]
def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/optimize", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return time.time() - t, out
for name, port in [("local engine", int(sys.argv[1])), ("remote policy", int(sys.argv[2]))]:
    wall = units = tokens = 0
    for p in prompts:
        s, out = post(port, {"prompt": p, "strategy": "tpo", "n": 4, "rounds": 1, "max_tokens": 64,
                             "budget": {"compute": 3000}, "seed": 1, "reward": "concise"})
        wall += s; units += out["usage"]["compute"]; tokens += out["usage"]["tokens_generated"]
    print(f"| {name} | {len(prompts)} | {wall:.1f} | {units} | {tokens} | {1000*wall/tokens:.1f} |")
