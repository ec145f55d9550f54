"""The report: readable numbers and complete captions, and only the caveats that apply."""



def test_confusion_numbers_readable_and_captions_complete():
    from chestxray.evaluation.explain import cam_caption
    from chestxray.evaluation.plots import count_colour

    assert count_colour(90, 100) == "white" and count_colour(10, 100) == "black" and count_colour(0, 0) == "black"
    caption = cam_caption("x.png", "normal", 0.71, 0.62)
    assert "predicted infected" in caption and "threshold 0.62" in caption and "P(inf) 0.71" in caption


def test_synthetic_report_has_no_nih_caveat(relative_runs):
    _, runs = relative_runs
    import re

    html = re.sub(r"data:image/png;base64,[^\"]+", "", (runs[0] / "report.html").read_text())  # text only
    assert "SYNTHETIC" in html and "Labels mined from reports" not in html and "NIH" not in html
