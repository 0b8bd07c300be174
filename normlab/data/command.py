"""`normlab data`: prepare datasets from their original files and show what is where.

    normlab data prepare mnist --from /work/shared/datasets     # offline, from a local folder
    normlab data prepare cifar10                                # downloads (needs internet)
    normlab data prepare imagenet2012 --from /data/imagenet     # the two ILSVRC2012 tars
    normlab data prepare image_folder --from DIR --name NAME    # DIR/<split>/<class>/<image>
    normlab data info                                           # every dataset, sizes, status
    normlab data info cifar10                                   # incl. partial splits

Wiring (in the CLI): `command.add_subcommand(subparsers)`; then `args.func(args)` runs it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from normlab.data import archives, datasets
from normlab.data.catalog import BUILT, CATALOG, image_folder_info


def add_subcommand(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `data prepare` and `data info` to `subparsers`; sets `func=run` on the namespace.

        parser = argparse.ArgumentParser(prog="normlab")
        add_subcommand(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["data", "info", "mnist"])
        exit_status = args.func(args)
    """
    data = subparsers.add_parser("data", help="prepare datasets and show where they are")
    sub = data.add_subparsers(dest="data_command", required=True)

    def add_dirs(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            help="archives directory, one sub-folder per dataset "
            "(default: $NORMLAB_DATA_DIR, else ~/.cache/normlab/archives)",
        )
        p.add_argument(
            "--tfds-dir",
            help="prepared TFDS data (default: $NORMLAB_TFDS_DIR, else ~/.cache/normlab/tfds)",
        )

    prepare = sub.add_parser("prepare", help="build the TFDS data of a dataset from its files")
    prepare.add_argument("name", help=f"one of {', '.join(BUILT)}, or image_folder")
    prepare.add_argument(
        "--from",
        dest="source",
        metavar="DIR",
        help="folder holding the original files (or a NAME/ sub-folder with them); without it "
        "they are taken from --data-dir/NAME, or downloaded there",
    )
    add_dirs(prepare)
    prepare.add_argument("--no-verify", action="store_true", help="skip the sha256 checks")
    prepare.add_argument("--force", action="store_true", help="rebuild if already prepared")
    prepare.add_argument(
        "--name",
        dest="dataset_name",
        metavar="NAME",
        help="image_folder only: the data set's name (then --config.dataset=NAME)",
    )
    prepare.add_argument(
        "--skip-bad",
        action="store_true",
        help="image_folder only: leave out unreadable or non-image files (counted) instead of "
        "stopping at the first",
    )

    info = sub.add_parser("info", help="splits, sizes, partial splits and locations")
    info.add_argument("name", nargs="?", help="a dataset (default: all of normlab's)")
    add_dirs(info)
    data.set_defaults(func=run)
    return data


def run(args: argparse.Namespace) -> int:
    """Runs the parsed `data` sub-command; returns the process exit status."""
    try:
        if args.data_command == "prepare":
            return _prepare(args)
        return _info(args)
    except ValueError as err:  # DatasetNotFoundError, ChecksumError, bad names: say it plainly
        print(f"error: {err}", file=sys.stderr)
        return 1


def _prepare_image_folder(args: argparse.Namespace) -> int:
    if args.source is None or args.dataset_name is None:
        raise ValueError("prepare image_folder needs --from DIR (DIR/<split>/<class>/<image>) "
                         "and --name NAME")
    from normlab.data.builders.image_folder import prepare_image_folder

    name = args.dataset_name
    existing = datasets.prepared_dir(name, args.tfds_dir)
    if existing is not None and not args.force:
        print(f"{name} is already prepared in {existing}; --force rebuilds it")
    else:
        start = time.perf_counter()
        with datasets._quiet_tfds(progress_bars=False):
            folder = prepare_image_folder(
                args.source, name, datasets.resolve_tfds_dir(args.tfds_dir),
                skip_bad=args.skip_bad, force=args.force,
            )
        print(f"prepared {name} in {folder} ({time.perf_counter() - start:.1f} s)")
    _print_info(name, args.data_dir, args.tfds_dir)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    if args.name == "image_folder":
        return _prepare_image_folder(args)
    if args.dataset_name is not None or args.skip_bad:
        raise ValueError(f"--name and --skip-bad are for image_folder, not {args.name}")
    if args.name in CATALOG and not CATALOG[args.name].builder:
        print(f"{args.name} is {CATALOG[args.name].prepare}")
        return 0
    existing = datasets.prepared_dir(args.name, args.tfds_dir)
    if existing is not None and not args.force:
        print(f"{args.name} is already prepared in {existing}; --force rebuilds it")
        _print_info(args.name, args.data_dir, args.tfds_dir)
        return 0
    start = time.perf_counter()
    folder = datasets.prepare(
        args.name,
        source=args.source,
        data_dir=args.data_dir,
        tfds_dir=args.tfds_dir,
        verify=not args.no_verify,
        force=args.force,
    )
    print(f"prepared {args.name} in {folder} ({time.perf_counter() - start:.1f} s)")
    archive_folder = None  # where the files were taken from, if not the archives dir
    if args.source is not None and args.data_dir is None:
        archive_folder = archives.dataset_folder(args.name, args.source)
    _print_info(args.name, args.data_dir, args.tfds_dir, archive_folder)
    return 0


def _info(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list(CATALOG)
    for name in names:
        _print_info(name, args.data_dir, args.tfds_dir)
    return 0


def _print_info(
    name: str, data_dir: str | None, tfds_dir: str | None, archive_folder: Path | None = None
) -> None:
    info = datasets.dataset_info(name, data_dir=data_dir, tfds_dir=tfds_dir, prepare=False)
    shape = "x".join("?" if d is None else str(d) for d in info.image_shape)
    print(f"{name}: {info.num_classes} classes, images {shape}")
    print("  splits: " + ", ".join(f"{s} {n:,}" for s, n in info.splits.items()))
    for split, what in info.partial_splits.items():
        print(f"  PARTIAL {split}: {what}")
    if name not in CATALOG:
        folder = datasets.prepared_dir(name, tfds_dir)
        if folder is None:
            print(f"  prepared: {datasets.resolve_tfds_dir(tfds_dir)} (TFDS)")
            return
        entry = image_folder_info(name, datasets.resolve_tfds_dir(tfds_dir))
        print(f"  {entry.description}\n  prepared: {folder}\n  how to rebuild: {entry.prepare}")
        return
    print(f"  how to get it: {CATALOG[name].prepare}")
    if not CATALOG[name].builder:
        return
    prepared = datasets.prepared_dir(name, tfds_dir)
    print(f"  prepared: {prepared or 'no (sizes above are the official ones)'}")
    folder = archive_folder or datasets.resolve_data_dir(data_dir) / name
    layout = archives.find_layout(name, folder)
    found = ", ".join(layout.files) if layout else "not found"
    print(f"  archives: {folder}: {found}")
