"""Attention pictures: PNG heatmaps, and the HTML head view in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from roberta import visualize
from roberta.cli import main
from roberta.config import RobertaConfig
from roberta.model import RobertaModel

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic(
    T: int, layers: int = 2, heads: int = 3, seed: int = 0
) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """L random attention tensors (1, nh, T, T) with rows summing to 1, and T labels."""
    g = torch.Generator().manual_seed(seed)
    attentions = tuple((torch.randn(1, heads, T, T, generator=g) * 3).softmax(-1) for _ in range(layers))
    return attentions, ["<s>"] + [f"w{i}" for i in range(T - 2)] + ["</s>"]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, data_dir):
    """A random 2-layer model (hidden 16, 4 heads) with the real roberta-base tokenizer, saved.
    initializer_range 0.3 makes its heads attend sharply, so layers and heads differ visibly."""
    from roberta.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer")
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=32, max_position_embeddings=66, initializer_range=0.3)  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny")
    RobertaModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---- preparing the weights ----------------------------------------------------------------------


def test_padding_is_dropped_and_matches_the_unpadded_run(tiny_model_dir):
    from roberta.tokenizer import Tokenizer

    model, tok = (
        RobertaModel.from_pretrained(tiny_model_dir).eval(),
        Tokenizer.from_pretrained(tiny_model_dir),
    )
    texts = ["A much longer first sentence, with many more tokens in it.", "Short one."]
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        padded = model(batch["input_ids"], batch["attention_mask"], output_attentions=True).attentions
    alone, labels = visualize.model_attentions(model, tok, texts[1])
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][1].tolist())
    maps = visualize.prepare(padded, tokens, batch["attention_mask"], batch_index=1)
    assert "<pad>" in tokens and "<pad>" not in maps.tokens and len(maps.tokens) == len(labels)
    assert maps.note == "" and maps.weights.shape == (2, 4, len(labels), len(labels))
    np.testing.assert_allclose(maps.weights, torch.stack([a[0] for a in alone]).numpy(), atol=1e-6)
    assert labels == ["<s>", "Short", "one", ".", "</s>"]


def test_long_inputs_are_cut_for_display_with_a_note():
    attentions, tokens = synthetic(100)
    maps = visualize.prepare(attentions, tokens, max_tokens=64)
    assert maps.weights.shape == (2, 3, 64, 64) and maps.tokens == tokens[:64]
    assert maps.note == "showing the first 64 of 100 tokens"
    np.testing.assert_array_equal(maps.weights, torch.stack([a[0, :, :64, :64] for a in attentions]).numpy())
    assert (
        "showing the first 64 of 100 tokens" in visualize.attention_figure(maps, title="long").get_suptitle()
    )


def test_bad_input_says_what_is_wrong(tmp_path):
    attentions, tokens = synthetic(5)
    with pytest.raises(ValueError, match="output_attentions=True"):
        visualize.prepare(None, tokens)
    with pytest.raises(ValueError, match="4 token labels for attention over 5 tokens"):
        visualize.prepare(attentions, tokens[:4])
    with pytest.raises(ValueError, match="name the file .png or .html"):
        visualize.save_attention(tmp_path / "a.svg", attentions, tokens)
    with pytest.raises(ValueError, match="layer must be in 0..1"):
        visualize.save_attention(tmp_path / "a.png", attentions, tokens, layer=2)
    with pytest.raises(ValueError, match="head must be in 0..2"):
        visualize.save_attention(tmp_path / "a.html", attentions, tokens, head=-1)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


# ---- PNG ----------------------------------------------------------------------------------------


def png_size(path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("layer, head", [(1, 2), (None, None)])
def test_png_is_a_valid_image_that_grows_with_the_tokens(tmp_path, layer, head):
    sizes = []
    for T in (6, 24, 200):
        attentions, tokens = synthetic(T)
        path = tmp_path / f"{T}.png"
        visualize.save_attention(path, attentions, tokens, layer=layer, head=head, max_tokens=32)
        sizes.append(png_size(path))
    (w6, h6), (w24, h24), (w200, h200) = sizes
    assert w24 > w6 and h24 > h6  # more tokens, bigger figure
    assert w200 > w24 and h200 > h24  # 200 tokens are drawn as 32: bounded, no crash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["200.png", "24.png", "6.png"]  # no temp files left


def test_grid_has_one_panel_per_layer_and_head():
    maps = visualize.prepare(*synthetic(8, layers=2, heads=3))
    assert len(visualize.attention_figure(maps).axes) == 6
    assert len(visualize.attention_figure(maps, layer=1).axes) == 3
    single = visualize.attention_figure(maps, layer=1, head=0)
    assert [ax.get_title() for ax in single.axes][0] == "layer 1 head 0"
    assert [t.get_text() for t in single.axes[0].get_xticklabels()] == maps.tokens


def test_cli_png(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "fig.png"
    argv = [
        "attention",
        "The quick brown fox.",
        "--pair",
        "A dog.",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
    ]
    assert main([*argv, "--layer", "1", "--head", "3"]) == 0
    assert "attention of 12 tokens (2 layers x 4 heads)" in capsys.readouterr().out
    png_size(out)
    assert main([*argv, "--head", "4"]) == 2
    assert "head must be in 0..3" in capsys.readouterr().err


# ---- HTML ---------------------------------------------------------------------------------------


def page_data(page: str) -> dict:
    return json.loads(
        re.search(r'<script type="application/json" id="attention-data">(.*?)</script>', page, re.S)[1]
    )


def test_html_page_is_self_contained_and_embeds_the_weights():
    attentions, tokens = synthetic(6)
    tokens[2] = "</script><b>x</b>"  # a token must not end the data block
    page = visualize.attention_html(visualize.prepare(attentions, tokens), layer=1, head=2, title="a <title>")
    data = page_data(page)
    assert data["tokens"] == tokens and data["layer"] == 1 and data["head"] == 2
    assert data["special"] == [True, False, False, False, False, True]
    np.testing.assert_allclose(data["attention"], torch.stack([a[0] for a in attentions]).numpy(), atol=5e-5)
    assert page.count("</script>") == 2 and "a &lt;title&gt;" in page
    assert not re.search(r"(src|href)\s*=|https?://(?!www\.w3\.org/2000/svg)", page)  # nothing fetched


# ---- HTML in a real browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through Selenium and chromedriver (Debian: chromium, chromium-driver)."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install selenium)"
    )
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no chromium/chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1000,900",
    ):
        options.add_argument(arg)
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


OPACITIES = "return [...document.querySelectorAll('#view line.attn')].map(l => Number(l.getAttribute('stroke-opacity')))"


def test_head_view_in_a_browser(browser, tiny_model_dir, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = tmp_path / "view.html"
    assert main(["attention", "The quick brown fox jumps over the lazy dog.", "--model", str(tiny_model_dir),
                 "--out", str(page), "--layer", "1", "--head", "2"]) == 0  # fmt: skip
    data = page_data(page.read_text(encoding="utf-8"))
    T, a = len(data["tokens"]), np.array(data["attention"])  # (L, nh, T, T)
    browser.get(page.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors

    layer, head = Select(browser.find_element(By.ID, "layer")), Select(browser.find_element(By.ID, "head"))
    assert (layer.first_selected_option.text, head.first_selected_option.text) == ("layer 1", "head 2")
    drawn = np.array(browser.execute_script(OPACITIES)).reshape(T, T)
    np.testing.assert_allclose(drawn, a[1, 2], atol=1e-9)  # line i -> j has opacity = weight
    layer.select_by_value("0")
    drawn_layer0 = np.array(browser.execute_script(OPACITIES)).reshape(T, T)
    np.testing.assert_allclose(drawn_layer0, a[0, 2], atol=1e-9)
    assert np.abs(drawn_layer0 - drawn).max() > 0.05  # a different picture, not a redraw of the same
    head.select_by_value("3")
    drawn_head3 = np.array(browser.execute_script(OPACITIES)).reshape(T, T)
    np.testing.assert_allclose(drawn_head3, a[0, 3], atol=1e-9)
    assert np.abs(drawn_head3 - drawn_layer0).max() > 0.05

    fox = browser.find_elements(By.CSS_SELECTOR, "#view text.token.left")[4]
    assert fox.text == "fox"
    ActionChains(browser).move_to_element(fox).perform()
    focused = np.array(browser.execute_script(OPACITIES)).reshape(T, T)
    np.testing.assert_allclose(focused[4], a[0, 3, 4], atol=1e-9)  # only fox's lines stay
    assert np.all(np.delete(focused, 4, axis=0) == 0)
    shot = tmp_path / "view.png"
    assert browser.save_screenshot(str(shot))
    w, h = png_size(shot)
    assert w > 300 and h > 300
    ActionChains(browser).move_to_element(browser.find_element(By.TAG_NAME, "h1")).perform()
    np.testing.assert_allclose(np.array(browser.execute_script(OPACITIES)).reshape(T, T), a[0, 3], atol=1e-9)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_long_page_in_a_browser(browser, tmp_path):
    attentions, tokens = synthetic(150, layers=3, heads=4)
    page = visualize.save_attention(tmp_path / "long.html", attentions, tokens, title="long")
    browser.get(page.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert len(browser.execute_script(OPACITIES)) == 64 * 64
    assert "showing the first 64 of 150 tokens" in browser.find_element("css selector", "p.note").text


def test_model_view_in_a_browser(browser, tiny_model_dir, tmp_path):
    """Every layer x head as a small picture; clicking one opens it in the head view."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = tmp_path / "model.html"
    assert main(["attention", "The quick brown fox jumps over the lazy dog.", "--model", str(tiny_model_dir),
                 "--out", str(page)]) == 0  # fmt: skip
    a = np.array(page_data(page.read_text(encoding="utf-8"))["attention"])  # (L, nh, T, T)
    L, nh, T = a.shape[0], a.shape[1], a.shape[2]
    browser.get(page.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    cells = browser.find_elements(By.CSS_SELECTOR, "#model-view .cell")
    assert len(cells) == L * nh == len(browser.find_elements(By.CSS_SELECTOR, "#model-view canvas"))
    assert [c.text for c in cells[:2]] == ["L0 H0", "L0 H1"]
    pictures = browser.execute_script(
        "return [...document.querySelectorAll('#model-view canvas')].map(c => c.toDataURL())"
    )
    assert len(set(pictures)) == L * nh  # each head drawn, and drawn differently
    assert browser.find_element(By.CSS_SELECTOR, "#model-view .cell.selected").text == "L0 H0"

    target = next(c for c in cells if c.text == "L1 H3")
    target.click()
    layer, head = Select(browser.find_element(By.ID, "layer")), Select(browser.find_element(By.ID, "head"))
    assert (layer.first_selected_option.text, head.first_selected_option.text) == ("layer 1", "head 3")
    np.testing.assert_allclose(np.array(browser.execute_script(OPACITIES)).reshape(T, T), a[1, 3], atol=1e-9)
    assert browser.find_element(By.CSS_SELECTOR, "#model-view .cell.selected").text == "L1 H3"
    head.select_by_value("0")  # the selectors keep the model view's mark in step
    assert browser.find_element(By.CSS_SELECTOR, "#model-view .cell.selected").text == "L1 H0"
    shot = tmp_path / "model.png"
    assert browser.save_screenshot(str(shot)) and min(png_size(shot)) > 300
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


# ---- token attributions (roberta/interpret.py) ----------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier_dir(tmp_path_factory, data_dir):
    """A random 3-label classifier (hidden 16) with the real roberta-base tokenizer, saved."""
    from roberta.heads import RobertaForSequenceClassification
    from roberta.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(data_dir / "roberta-base-tokenizer")
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=32, max_position_embeddings=66, initializer_range=0.3,
                           id2label={0: "negative", 1: "neutral", 2: "positive"})  # fmt: skip
    folder = tmp_path_factory.mktemp("classifier")
    RobertaForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def explanation_data(page: str) -> dict:
    return json.loads(
        re.search(r'<script type="application/json" id="explanation-data">(.*?)</script>', page, re.S)[1]
    )


VALUES = "return [...document.querySelectorAll('#text span.tok')].map(s => Number(s.dataset.value))"
COLOURS = (
    "return [...document.querySelectorAll('#text span.tok')].map(s => getComputedStyle(s).backgroundColor)"
)


def test_explanation_page_in_a_browser(browser, tiny_classifier_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = tmp_path / "why.html"
    text = "A gripping film, <b>not</b> dull at all."  # markup in the text is shown as text
    assert main(["explain-prediction", text, "--model", str(tiny_classifier_dir), "--steps", "16",
                 "--out", str(page)]) == 0  # fmt: skip
    source = page.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=|https?://", source)  # one file, nothing fetched
    data = explanation_data(source)
    view = {(v["method"], v["target"]): v["scores"] for v in data["views"]}
    assert len(view) == 4 * 3  # every method x every label
    browser.get(page.as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []

    assert browser.find_element(By.ID, "text").text.replace("\n", " ") == f"<s> {text} </s>"
    assert data["prediction"] in browser.find_element(By.ID, "summary").text
    method, target = (
        Select(browser.find_element(By.ID, "method")),
        Select(browser.find_element(By.ID, "target")),
    )
    assert method.first_selected_option.text == "integrated gradients"
    assert [o.text for o in target.options][0] == data["prediction"] == data["target"]
    drawn = browser.execute_script(VALUES)
    np.testing.assert_allclose(drawn, view[("ig", data["target"])], atol=1e-12)
    note = browser.find_element(By.ID, "method-note").text
    assert "convergence delta" in note and "16 Gauss-Legendre steps" in note

    # the largest attribution is drawn red, the smallest blue; special tokens (IG: 0) white
    colours = browser.execute_script(COLOURS)
    scores = np.array(drawn)
    r, g, b = map(int, re.findall(r"\d+", colours[int(scores.argmax())])[:3])
    assert r > b and r > g
    r, g, b = map(int, re.findall(r"\d+", colours[int(scores.argmin())])[:3])
    assert b > r
    assert colours[0] == "rgb(255, 255, 255)"

    other = next(o.text for o in target.options if o.text != data["target"])
    target.select_by_visible_text(other)
    redrawn = browser.execute_script(VALUES)
    np.testing.assert_allclose(redrawn, view[("ig", other)], atol=1e-12)
    assert np.abs(np.array(redrawn) - drawn).max() > 1e-3
    assert browser.execute_script(COLOURS) != colours
    assert browser.find_element(By.ID, "what").text == f"f = the logit of “{other}”"

    method.select_by_value("rollout")
    rolled = browser.execute_script(VALUES)
    np.testing.assert_allclose(rolled, view[("rollout", other)], atol=1e-12)
    assert "Attention rollout" in browser.find_element(By.ID, "method-note").text
    method.select_by_value("saliency")
    np.testing.assert_allclose(browser.execute_script(VALUES), view[("saliency", other)], atol=1e-12)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#top li")) == min(
        8, sum(not s for s in data["special"])
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#text span.read")) == 1  # <s>: what the head reads
    shot = tmp_path / "why.png"
    assert browser.save_screenshot(str(shot)) and min(png_size(shot)) > 300
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_explanation_png_is_a_bar_per_token(tiny_classifier_dir, tmp_path, capsys):
    out = tmp_path / "why.png"
    assert main(["explain-prediction", "a gripping film", "--model", str(tiny_classifier_dir), "--steps", "8",
                 "--method", "grad-input", "--out", str(out)]) == 0  # fmt: skip
    assert "written to" in capsys.readouterr().out
    w, h = png_size(out)
    assert w > 300 and h > 200
