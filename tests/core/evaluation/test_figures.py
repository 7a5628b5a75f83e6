import base64

from motfm_core.evaluation.figures import inline_figures, loss_figure


def test_inline_figures_embeds_the_pngs_that_exist_and_leaves_the_rest(tmp_path):
    png = loss_figure([1.0, 0.5, 0.25], 150, 0.25, tmp_path / "training.png")
    md = "# r\n\nloss: ![training loss](training.png) and ![gone](missing.png), ![web](https://x.org/a.png)\n"
    out = inline_figures(md, tmp_path)
    prefix = "![training loss](data:image/png;base64,"
    assert prefix in out and "![gone](missing.png)" in out and "![web](https://x.org/a.png)" in out
    encoded = out.split(prefix)[1].split(")")[0]
    assert base64.b64decode(encoded) == png.read_bytes()
    assert out.startswith("# r\n\nloss: ") and out.count("![") == 3
