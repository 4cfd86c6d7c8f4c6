"""Ship trained parts into a bundle: ``python -m training.ship --lm RUN/export --dit RUN/export``.

Copies each given part (``orchestrator/`` from an LM export, ``dit/`` from a DiT or distillation export)
into the target bundle (default: the shipped ``streamchar/checkpoints/tiny``), marks it trained and
records how it was trained (the export's ``training`` entry) in ``bundle.json``; a part warm-started from
the one it replaces keeps that one's entry under ``warm_started_from``, so the record covers every run.
A DiT is only shipped into a bundle whose codecs are the ones it was trained against (same files),
since its latents mean nothing under other codecs.

A bundle holds up to three DiTs: ``dit/`` (what the renderer loads by default: the stage-2 student),
``teacher/`` (``--teacher``) and ``dit-stage1/`` (``--stage1``), each taken from an export's ``dit/``.
``--teacher`` may name the target bundle itself, moving its current ``dit/`` (and record) to ``teacher/``
before a student replaces it; parts are shipped in the order lm, teacher, stage1, dit. ``--variant
dit-NAME=EXPORT`` ships any other DiT beside them (e.g. an ablation's student, ``dit-nopointer``).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
from pathlib import Path

from streamchar.models.bundle import default_checkpoint, read_manifest, write_manifest

# kind -> (directory in the export, directory in the bundle); the record moves with it (same names)
PARTS = {"lm": ("orchestrator", "orchestrator"), "teacher": ("dit", "teacher"), "stage1": ("dit", "dit-stage1"),
         "dit": ("dit", "dit")}


def _same_codecs(a: Path, b: Path) -> bool:
    pairs = [("video_codec/model.safetensors",), ("video_codec/config.json",), ("units/model.safetensors",),
             ("audio_codec.json",)]
    return all((a / p).exists() and (b / p).exists() and filecmp.cmp(a / p, b / p, shallow=False)
               for (p,) in pairs)


def _with_lineage(entry: dict, directory: str, part: str, previous: dict | None, into: Path, depth: int = 0) -> dict:
    """`entry` with ``warm_started_from``: the record of the weights its run continued. Those are the
    bundle's own `part` (its `previous` record), or another run's export (a run directory or the export
    itself), whose record is followed the same way, so a chain of warm starts keeps every run."""
    init = entry.get("config", {}).get("run", {}).get("init_from", "")
    if not init or depth > 16:
        return entry
    source = Path(init)
    if source.resolve() in ((into / part).resolve(), into.resolve()):
        return {**entry, "warm_started_from": previous} if previous else entry
    for export in (source / "export", source, source.parent):  # a run dir, an export, an export's part dir
        earlier = read_manifest(export).get("training", {}).get(directory)
        if earlier:
            return {**entry, "warm_started_from": _with_lineage(earlier, directory, part, previous, into, depth + 1)}
    return entry


def ship(into: Path, lm: Path | None = None, dit: Path | None = None, teacher: Path | None = None,
         stage1: Path | None = None, variants: dict[str, Path] | None = None) -> dict:
    manifest = read_manifest(into)
    for name in variants or {}:
        if not name.startswith("dit-") or Path(name).name != name or name == "dit-stage1":
            raise SystemExit(f"a variant's name is dit-NAME (not dit-stage1: --stage1), got {name!r}")
    parts = [(kind, source, *PARTS[kind]) for kind, source in
             (("lm", lm), ("teacher", teacher), ("stage1", stage1), ("dit", dit))]
    parts += [("variant", source, "dit", name) for name, source in (variants or {}).items()]
    for kind, source, directory, part in parts:
        if source is None:
            continue
        if not (source / directory / "config.json").exists():
            raise SystemExit(f"{source} has no {directory}/ export")
        if kind != "lm" and not _same_codecs(source, into):
            raise SystemExit(f"{source} was trained against other codecs than {into}'s; not shipping its DiT")
        exported = read_manifest(source)  # read before a copy within the same bundle changes it
        entry = exported.get("training", {}).get(directory, {})
        target = into / part
        if target.resolve() != (source / directory).resolve():
            tmp = into / f".{part}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source / directory, tmp)
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        entry = _with_lineage(entry, directory, part, manifest.get("training", {}).get(part), into)
        manifest.setdefault("trained", {})[part] = True
        manifest.setdefault("training", {})[part] = entry
    write_manifest(into, manifest)
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm", type=Path, help="an LM run's export directory (holds orchestrator/)")
    parser.add_argument("--dit", type=Path, help="the default DiT: an export directory holding dit/")
    parser.add_argument("--teacher", type=Path, help="the teacher DiT (teacher/): an export or bundle's dit/")
    parser.add_argument("--stage1", type=Path, help="the stage-1 student (dit-stage1/): an export's dit/")
    parser.add_argument("--variant", action="append", default=[], metavar="dit-NAME=EXPORT",
                        help="another DiT beside them, as dit-NAME/ (e.g. an ablation's student)")
    parser.add_argument("--into", type=Path, default=default_checkpoint("tiny"))
    args = parser.parse_args()
    variants = {}
    for spec in args.variant:
        name, sep, path = spec.partition("=")
        if not sep:
            parser.error(f"--variant takes dit-NAME=EXPORT, got {spec!r}")
        variants[name] = Path(path)
    manifest = ship(args.into, args.lm, args.dit, args.teacher, args.stage1, variants)
    print(f"{args.into}: trained {manifest.get('trained')}")


if __name__ == "__main__":
    main()
