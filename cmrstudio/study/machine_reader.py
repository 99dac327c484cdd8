"""The machine reader of a study: train the real-vs-synthetic classifier on other cases, then answer
the study's questions into its database as the reader "machine (classifier)", so the report
scores it with the same statistics as the radiologists (and keeps it out of their pooled figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cmrstudio.errors import CmrError

READER = "machine (classifier)"


def add_machine_reader(study_dir: str | Path, train: list[str | Path], model: str | None = None, steps: int = 300, seed: int = 0,
                       progress: Callable[[str], None] | None = None) -> str:
    from cmrstudio.engine.factory import open_renderer
    from cmrstudio.io import read_cases
    from cmrstudio.study.design import load_study
    from cmrstudio.study.machine import machine_answers, make_training_pairs, save_classifier, train_classifier
    from cmrstudio.study.store import Store

    say = progress or (lambda _m: None)
    st = load_study(study_dir)
    if not train:
        raise CmrError("Give --train: real scans with masks to train the classifier on (not the cases the study shows).")
    cases = [c for p in train for c in read_cases(p) if c.image is not None and c.mask is not None]
    shown = {str(it.source.get("case")) for it in st.items if it.kind == "real"}
    overlap = sorted({c.case_id for c in cases} & shown)
    if overlap:
        raise CmrError(f"The training cases include {overlap[0]}, which the study shows to its readers; train on other patients.")
    renderer = open_renderer(model)
    images, labels = make_training_pairs(cases, renderer, rng_seed=seed)
    say(f"training on {len(labels)} slices ({int((labels == 0).sum())} real, {int(labels.sum())} synthetic by {renderer.name})")
    net, info = train_classifier(images, labels, steps=steps, seed=seed)
    save_classifier(net, {**info, "renderer": renderer.name, "train": [str(p) for p in train]}, st.folder / "machine" / "classifier")
    answers = []
    items = [(it.id, st.images[it.id]) for it in st.items]
    if st.mode in ("single", "both"):
        answers += machine_answers(net, items, "single", reader=READER)
    if st.mode in ("2afc", "both"):
        answers += machine_answers(net, items, "2afc", pairs=[(p.id, p.left, p.right) for p in st.pairs], reader=READER)
    store = Store(st)
    try:
        store.forget_reader(READER)  # a new machine replaces the previous one
        store.start(READER, machine=True)
        for a in answers:
            store.answer(READER, a["mode"], a["item"], a["answer"], int(a["confidence"]), float(a["seconds"]))
    finally:
        store.close()
    acc, auc = info.get("val_accuracy"), info.get("val_auc")
    fig = f"{acc:.2f} (AUC {auc:.2f})" if acc is not None and auc is not None else "n/a"
    return (f"machine reader: {len(answers)} answers in {st.folder}; classifier validation accuracy {fig} "
            f"on {info.get('n_val')} held-out training slices, {info.get('steps_done')} steps")
