"""``fba caption``: caption a data set with a vision-language model (or the template backend)."""
from __future__ import annotations

import argparse

HELP = "caption a data set with a vision-language model (or the template backend)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="data set name (fba.data.build_dataset)")
    parser.add_argument("--root", required=True, help="data set root folder")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="data set reader option, e.g. subset=detected for cuhk03np")
    parser.add_argument("--backend", choices=["llava", "template"], default="llava",
                        help="llava (a vision-language model) or template (synthetic data: the generator's attributes)")
    parser.add_argument("--caption-noise", type=float, default=0.0, metavar="LEVEL",
                        help="template backend: write what a captioner would report, 0 = the truth, 1 = realistic")
    parser.add_argument("--caption-seed", type=int, default=None,
                        help="template backend: seed of the caption noise (default: the seed in <root>/meta.json)")
    parser.add_argument("--model", default="llava-hf/llava-1.5-7b-hf",
                        help="local folder of a LLaVA-style model (or a hub id already cached / with --allow-download)")
    parser.add_argument("--allow-download", action="store_true", help="let transformers fetch --model from the hub")
    parser.add_argument("--out", default=None,
                        help="JSON Lines output (default: <root>/captions.jsonl); resumed if present")
    parser.add_argument("--batch-size", type=int, default=16, help="images per generate call (2x rows: fg and bg)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="token limit, fg caption")
    parser.add_argument("--max-new-tokens-bg", type=int, default=80,
                        help="token limit, bg caption")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                        help="auto: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--static-cache", action="store_true",
                        help="static KV cache, so transformers compiles the decode step (GPU; first batches compile)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int | None:
    from fba.apps.captioner import run as run_caption

    return run_caption(args)
