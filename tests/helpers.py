"""Test helpers that write real files in real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_dicom_series(folder: Path, volume: np.ndarray, series_uid: str, spacing=(8.0, 1.5, 1.5), description="SAX cine", trigger=None, start_instance=1, manufacturer="SIEMENS"):
    """Write a (Z, Y, X) int16 volume as one DICOM file per slice with real position tags."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z, sl in enumerate(volume.astype(np.int16)):
        img = sitk.GetImageFromArray(sl)
        img.SetSpacing((spacing[2], spacing[1]))
        tags = {
            "0008|0060": "MR",
            "0008|0070": manufacturer,
            "0008|103e": description,
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0008|0018": f"{series_uid}.{z + start_instance}",
            "0020|0013": str(z + start_instance),
            "0020|0032": f"0\\0\\{z * spacing[0]}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]}\\{spacing[2]}",
            "0018|0050": str(spacing[0]),
        }
        if trigger is not None:
            tags["0018|1060"] = str(trigger)
        for k, v in tags.items():
            img.SetMetaData(k, v)
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{z + start_instance:03d}.dcm"))
        writer.Execute(img)


def run(*args, check=True, env=None):
    """Run the cmrstudio command in a subprocess; assert success unless check=False."""
    import os
    import subprocess
    import sys

    e = dict(os.environ, PYTHONIOENCODING="utf-8", **(env or {}))
    p = subprocess.run([sys.executable, "-m", "cmrstudio", *args], capture_output=True, encoding="utf-8", errors="replace", timeout=600, env=e)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def cli(*args, check=True, env=None, reraise: tuple = ()):
    """The cmrstudio command in this process, as a user's shell would see it: exit code, stdout (strict UTF-8, like a
    terminal) and stderr, as :func:`run` returns them. For refusals of bad input, which answer in milliseconds where a new
    process takes seconds to import torch; what trains or renders for real runs in a subprocess (:func:`run`). The
    process's torch thread count and environment are put back afterwards; exceptions in ``reraise`` pass through."""
    import contextlib
    import io
    import os
    import subprocess
    import traceback

    import torch

    from cmrstudio.cli import main

    out_b, err_b = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_b, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_b, encoding="utf-8", errors="backslashreplace", write_through=True)
    rc, threads = 0, torch.get_num_threads()
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except reraise:
                raise
            except BaseException:
                traceback.print_exc(file=err)
                rc = 99
    finally:
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    p = subprocess.CompletedProcess(["cmrstudio", *map(str, args)], rc, out_b.getvalue().decode("utf-8", "replace"),
                                    err_b.getvalue().decode("utf-8", "replace"))
    if check:
        assert p.returncode == 0, p.stderr
    return p


def copy_model(card_path: Path, dest: Path) -> Path:
    """Copy a model's weights and card into ``dest``; returns the copied card."""
    import json
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    weights = card_path.with_name(json.loads(card_path.read_text(encoding="utf-8"))["weights"])
    for f in (weights, card_path):
        shutil.copy2(f, dest / f.name)
    return dest / card_path.name
