"""Looking inside a trained model (chapter 12): attention maps as one offline HTML page,
how much each layer application changes the hidden states, attention entropy, nearest
neighbours in the word-embedding table.

    minialbert attention --checkpoint runs/pretrain "Return a new list." --html maps.html

The page is a single file — the maps as JSON, the script and the style inline, nothing
fetched — so it opens from disk, offline, in any browser: pick a layer application and a
head (or the mean of the heads), hover a token to see where it looks.
"""
import html
import json
import math

import numpy as np


# ------------------------------------------------------------------------------ measures

def layer_transitions(hidden_states):
    """hidden_states: the encoder's inputs and outputs, [L + 1] arrays [T, H] (or [B, T, H])
    -> per layer application l: the L2 distance and the cosine similarity between its input
    and its output, each averaged over the tokens (the paper's Figure 1)."""
    l2, cos = [], []
    for a, b in zip(hidden_states[:-1], hidden_states[1:]):
        a = np.asarray(a, np.float64).reshape(-1, a.shape[-1])
        b = np.asarray(b, np.float64).reshape(-1, b.shape[-1])
        l2.append(float(np.linalg.norm(b - a, axis=1).mean()))
        cos.append(float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) *
                                            np.linalg.norm(b, axis=1) + 1e-30)).mean()))
    return np.array(l2), np.array(cos)


def attention_entropy(maps):
    """maps [L, N, T, T] (rows sum to 1) -> mean entropy (nats) of a row, per layer
    application: 0 when every query looks at one key, ln T when it looks everywhere."""
    p = np.clip(np.asarray(maps, np.float64), 1e-30, 1.0)
    return -(p * np.log(p)).sum(-1).mean(axis=(1, 2))


def nearest_neighbours(table, tok, words, k=5):
    """Cosine nearest neighbours in the word-embedding table [V, E] of each word's first
    piece -> {word: [(piece, cosine), ...]} (the word itself left out)."""
    unit = table / (np.linalg.norm(table, axis=1, keepdims=True) + 1e-30)
    out = {}
    for w in words:
        ids = tok.encode(w)
        if not ids:
            continue
        i = ids[0]
        sims = unit @ unit[i]
        sims[i] = -np.inf
        best = np.argsort(-sims)[:k]
        out[w] = [(tok.id_to_piece(int(j)), float(sims[j])) for j in best]
    return out


# ------------------------------------------------------------------------------ the page

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>attention maps: __TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
.controls { margin-bottom: 1em; display: flex; gap: 1.5em; align-items: center; }
table.map { border-collapse: collapse; }
table.map td { width: 18px; height: 18px; padding: 0; border: 1px solid #f4f4f4; }
table.map th { font-weight: normal; font-size: 12px; white-space: nowrap; padding: 0 4px; }
table.map thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
table.map tr.hi th, table.map th.hi { background: #ffe08a; }
table.map tr.hi td { outline: 1px solid #d08000; }
#info { margin-top: .8em; min-height: 1.4em; }
</style></head>
<body>
<h1>Attention maps</h1>
<p>__TITLE__ — rows: the query token, columns: the key it attends to; darker is more
weight, scaled to the map's largest (each row sums to 1). Hover a row to read its largest
weights.</p>
<div class="controls">
  <label>layer application <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
</div>
<table class="map" id="map"></table>
<div id="info"></div>
<script>
const DATA = __DATA__;
const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
DATA.maps.forEach((_, l) => layerSel.add(new Option(String(l + 1), l)));
headSel.add(new Option("mean of the heads", -1));
DATA.maps[0].forEach((_, h) => headSel.add(new Option(String(h + 1), h)));
function current() {
  const l = +layerSel.value, h = +headSel.value, maps = DATA.maps[l];
  if (h >= 0) return maps[h];
  return maps[0].map((row, i) => row.map((_, j) =>
    maps.reduce((s, m) => s + m[i][j], 0) / maps.length));
}
function draw() {
  const m = current(), t = DATA.tokens, tab = document.getElementById("map");
  const top = Math.max(...m.map(r => Math.max(...r))) || 1;  // colour scaled to the map's largest
  let s = "<thead><tr><th></th>" + t.map(x => "<th>" + x + "</th>").join("") + "</tr></thead><tbody>";
  m.forEach((row, i) => {
    s += '<tr data-row="' + i + '"><th>' + t[i] + "</th>";
    row.forEach((w, j) => {
      s += '<td data-w="' + w.toFixed(3) + '" style="background: rgba(33, 90, 170, ' +
           Math.min(1, w / top).toFixed(3) + ')"></td>';
    });
    s += "</tr>";
  });
  tab.innerHTML = s + "</tbody>";
  tab.querySelectorAll("tbody tr").forEach(tr => tr.addEventListener("mouseenter", () => {
    tab.querySelectorAll("tr.hi").forEach(x => x.classList.remove("hi"));
    tr.classList.add("hi");
    const i = +tr.dataset.row, row = m[i];
    const top = row.map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, 3);
    document.getElementById("info").textContent = t[i] + " looks at: " +
      top.map(([w, j]) => t[j] + " " + w.toFixed(2)).join(", ");
  }));
}
layerSel.addEventListener("change", draw);
headSel.addEventListener("change", draw);
draw();
</script>
</body></html>
"""


def attention_page(maps, tokens, title="a sentence"):
    """maps [L, N, T, T], tokens [T] -> the HTML of one self-contained page."""
    maps = np.asarray(maps, np.float64)
    data = dict(tokens=[html.escape(str(t)) for t in tokens],
                maps=np.round(maps, 4).tolist())
    return (_PAGE.replace("__TITLE__", html.escape(title))
            .replace("__DATA__", json.dumps(data, separators=(",", ":"))))


# ------------------------------------------------------------------------------ CLI

def _cmd_attention(args):
    from .inference import Predictor

    p = Predictor.load(args.checkpoint)
    maps, tokens = p.attentions(args.text, args.pair)
    ent = attention_entropy(maps)
    print(f"{len(tokens)} tokens, {maps.shape[0]} layer applications × {maps.shape[1]} heads; "
          "mean attention entropy per application (nats, ln T = "
          f"{math.log(len(tokens)):.2f}): " + ", ".join(f"{e:.2f}" for e in ent))
    if args.html:
        title = args.text + (f"  |  {args.pair}" if args.pair else "")
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(attention_page(maps, tokens, title))
        print(f"attention page -> {args.html} (one file, works offline)")
    return 0


def add_commands(sub):
    from .options import Help

    p = sub.add_parser("attention", formatter_class=Help,
                       help="a text's attention maps: entropy per layer, and an offline HTML "
                       "page (--html)")
    p.add_argument("--checkpoint", required=True, help="minialbert run/checkpoint or Hugging "
                   "Face folder")
    p.add_argument("--pair", default=None, help="a second segment ([SEP] between them)")
    p.add_argument("--html", default=None, help="write the interactive page to this file")
    p.add_argument("text", help="the text")
    p.set_defaults(func=_cmd_attention)


__all__ = ["layer_transitions", "attention_entropy", "nearest_neighbours", "attention_page"]
