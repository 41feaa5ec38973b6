"""How much does recording cross-attention slow generation? (stage 04; budget: 20 % over plain generation)

Plain generation (fused SDPA everywhere, nothing kept) vs :func:`reprolib.viz.generate_with_attention`
(explicit softmax on the recorded layers, per-step history moved to the CPU) on the same device, same
prompt, seed and steps, interleaved after a warm-up; medians are printed and, with ``--out``, written as
JSON. Run it on the machine whose numbers you report, e.g.::

    python benchmarks/attention_overhead.py                                  # tiny models, CPU
    python benchmarks/attention_overhead.py --profile paper --repeats 5 --out runs/paper/attention/overhead.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from reprolib import viz  # noqa: E402
from reprolib.config import load_profile, resolve_device  # noqa: E402
from reprolib.io import atomic_write_json  # noqa: E402
from reprolib.models import load_checkpoint_components  # noqa: E402
from reprolib.report import device_info  # noqa: E402

PROMPT = "A tiger wearing an astronaut suit and drinking a cup of coffee"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--checkpoint", default="sd14")
    ap.add_argument("--layers", nargs="+", default=None, help="layer groups (default: the profile's)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the profile's)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)

    P = load_profile(args.profile)
    device = resolve_device(P)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    comps = load_checkpoint_components(args.checkpoint, base=P.model.pretrained, seed=P.model.seed).to(device, dtype)
    layers = args.layers or P.attention.layers
    steps = args.steps or P.attention.num_inference_steps
    res = viz.capture_overhead(comps, args.prompt, layers, steps, P.attention.guidance_scale, repeats=args.repeats,
                               height=P.model.resolution, width=P.model.resolution)
    res.update(profile=P.name, checkpoint=args.checkpoint, dtype=args.dtype, machine=device_info())
    print(f"{P.name} / {args.checkpoint} on {device} ({args.dtype}), {steps} steps, layers {layers}, "
          f"median of {args.repeats}:")
    print(f"  plain   {res['plain_s']:.3f} s")
    print(f"  capture {res['capture_s']:.3f} s")
    verdict = "within" if res["within_budget"] else "OVER"
    print(f"  overhead {100 * res['overhead']:+.1f} %  ({verdict} the 20 % budget)")
    if args.out:
        atomic_write_json(args.out, res)
        print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
