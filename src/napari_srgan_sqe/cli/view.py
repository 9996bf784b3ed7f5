"""`srgan-sqe view [PATH]`: open napari with a slide (default: the bundled sample)."""

from __future__ import annotations

import argparse

from napari_srgan_sqe.cli import SAMPLE_HELP, UserError, is_sample, slide_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        type=slide_path,
        default=None,
        metavar="PATH",
        help="slide or image to open (.svs .ndpi .mrxs .tif .ome.tif .ome.zarr .png ...); "
        f"default: the bundled sample slide; {SAMPLE_HELP}",
    )
    sim = parser.add_mutually_exclusive_group()
    sim.add_argument(
        "--simulate-lr",
        dest="simulate_lr",
        action="store_true",
        default=None,
        help="treat the slide as HR: super-resolve LR simulated from it, so quality "
        "can be measured against the original (default for the bundled sample)",
    )
    sim.add_argument(
        "--no-simulate-lr",
        dest="simulate_lr",
        action="store_false",
        help="super-resolve the slide itself (default for a slide you name other than the sample)",
    )
    parser.add_argument(
        "--degradation",
        choices=("scanner", "clean"),
        default="scanner",
        help="how simulated LR is made: scanner (blur, noise and JPEG / JPEG 2000 coding, "
        "as a scanner stores a slide; the default) or clean (the reference D_s)",
    )
    parser.add_argument(
        "--no-enhance",
        dest="enhance",
        action="store_false",
        help="only show the slide and the widgets; do not start super-resolving",
    )


def run(args: argparse.Namespace) -> int:
    from napari_srgan_sqe._napari.launch import NoDisplayError, launch_viewer
    from napari_srgan_sqe.cli.enhance import coding_text
    from napari_srgan_sqe.io.sample import sample_slide_path
    from napari_srgan_sqe.io.slides import open_slide

    slide = open_slide(args.path if args.path is not None else sample_slide_path())
    print(f"{slide.path.name}: {coding_text(slide.coding)}")
    if slide.mpp:
        print(f"pixel size: {slide.mpp:.4g} um (scale bar on)")
    else:
        print("pixel size: not recorded in the file; shown in pixels, no scale bar")
    sample = args.path is None or is_sample(args.path)
    simulate_lr = sample if args.simulate_lr is None else args.simulate_lr
    if args.enhance:  # the model the Enhance widget will pick, and why
        from napari_srgan_sqe.inference.export import default_model_for
        from napari_srgan_sqe.models.registry import model_for_coding

        if simulate_lr:
            name = model_for_coding(None, preset=args.degradation)
            why = f"LR simulated by the {args.degradation} degradation"
        else:
            name, why = default_model_for(slide.coding)
        print(f"model: {name} ({why}; the Model box chooses another)")
        if not simulate_lr:
            from napari_srgan_sqe.cli.enhance import print_coding_told

            print_coding_told(name, slide.coding)
    try:
        return launch_viewer(
            slide, simulate_lr=simulate_lr, enhance=args.enhance, degradation=args.degradation
        )
    except NoDisplayError as exc:
        raise UserError(str(exc)) from None
