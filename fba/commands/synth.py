"""``fba synth``: the synthetic person data set."""
from __future__ import annotations

import argparse

HELP = "generate the synthetic person data set (Market-1501 layout + captions)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (Market-1501 layout + captions)")
    parser.add_argument("--ids", type=int, default=50, help="identities: 1..ids/2 train, the rest test")
    parser.add_argument("--cams", type=int, default=4, help="cameras, each with its own background")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--occluded", action="store_true", help="railings, cars, poles and people in front")
    parser.add_argument("--per-camera", type=int, default=6, help="images of each identity in each of its cameras")
    parser.add_argument("--height", type=int, default=None, help="image height (default 128; a sequence's 360)")
    parser.add_argument("--width", type=int, default=None, help="image width (default 64; a sequence's 640)")
    parser.add_argument("--distractors", type=int, default=None, help="id-0 gallery images (default max(cams, ids/5))")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing images (output is the same)")
    parser.add_argument("--overwrite", action="store_true", help="replace the generated files in a non-empty --out")
    parser.add_argument("--caption-noise", type=float, default=0.0, metavar="LEVEL",
                        help="captions as a vision-language model would write them: 0 = the truth, 1 = realistic "
                             "(confused colours, missed, invented and leaked items); attributes.jsonl keeps the truth")
    sequence = parser.add_argument_group("tracking sequence (--sequence)")
    sequence.add_argument("--sequence", action="store_true",
                          help="write a tracking sequence in the MOTChallenge layout instead: new people crossing, "
                               "pausing, turning and passing behind street furniture (img1/, gt/gt.txt, det/det.txt)")
    sequence.add_argument("--frames", type=int, default=300)
    sequence.add_argument("--people", type=int, default=10)
    sequence.add_argument("--min-visible", type=float, default=0.35,
                          help="the ground truth and detections keep people at least this fraction visible")


def run(args: argparse.Namespace) -> int:
    from fba.data.synthetic.attributes import SynthError
    from fba.data.synthetic.generator import generate

    try:
        if args.sequence:
            from fba.data.synthetic.sequence import write_sequence

            summary = write_sequence(args.out, args.frames, args.people, args.seed,
                                     360 if args.height is None else args.height,
                                     640 if args.width is None else args.width, args.min_visible, args.overwrite)
        else:
            summary = generate(args.out, ids=args.ids, cams=args.cams, seed=args.seed, occluded=args.occluded,
                               per_camera=args.per_camera, height=128 if args.height is None else args.height,
                               width=64 if args.width is None else args.width,
                               distractors=args.distractors, workers=args.workers, overwrite=args.overwrite,
                               caption_noise=args.caption_noise)
    except SynthError as err:
        print(err)
        return 2
    print(summary)
    return 0
