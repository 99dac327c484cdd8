"""The studio shows every model's card with its evaluation (Studio ▸ Model cards…), in a real Qt window."""

from __future__ import annotations

import pytest


@pytest.mark.gui
def test_the_studio_shows_each_models_card_and_evaluation(tmp_path, make_napari_viewer, monkeypatch):
    from cmrstudio.evaluate.report import headline
    from cmrstudio.gui.app import StudioWindow
    from cmrstudio.models.registry import get_model

    monkeypatch.setenv("CMRSTUDIO_CONFIG", str(tmp_path / "settings.json"))
    monkeypatch.setenv("CMRSTUDIO_PROJECT", str(tmp_path / "studio-project"))
    win = StudioWindow(viewer=make_napari_viewer(show=True))
    try:
        assert "Model cards…" in [a.text() for a in win.studio_menu.actions()]
        dlg = win.model_cards_dialog("spade-cmr", modal=False)
        names = [dlg.picker.itemText(i) for i in range(dlg.picker.count())]
        assert names[0] == "spade-cmr" and {"seg-cmr", "flow-cmr", "flow-cmr-2step", "flow-cmr-fine", "flow-cmr-fine-2step", "layout-cmr"} <= set(names)
        text = dlg.text.toPlainText()
        card = get_model("spade-cmr").card
        h = headline(card)
        assert "Trained on" in text
        if "fidelity" not in card.get("metrics", {}):  # the retrained scene model has not been evaluated yet (issue 15)
            pytest.xfail("the shipped spade-cmr card has no measured figures yet: run runs/final_eval.sh (issue 15)")
        assert "Mask faithfulness" in text
        assert f"FID {card['metrics']['fidelity']['fid']:.1f}" in text  # the card's own figures, as measured
        real = card["metrics"]["realism_synthetic"]  # what issue 15 is about: can a reader tell its renders from scans
        assert "Realism, fully synthetic" in text and f"machine reader {100 * real['machine_accuracy']:.1f}%" in text
        assert f"right on {100 * h['realism_synthetic_reader_accuracy']:.0f}% of single images" in text
        if "membership_auc" in h:  # the shipped card carries the privacy evaluation
            assert "Privacy" in text and f"AUC {h['membership_auc']:.2f}" in text
        dlg.picker.setCurrentText("seg-cmr")
        seg = get_model("seg-cmr", kind="segmenter").card
        assert "(segmenter)" in dlg.text.toPlainText()
        if "held_out_segmentation" in seg.get("metrics", {}):
            assert "HD95" in dlg.text.toPlainText()
        dlg.close()
    finally:
        win.studio.close()
