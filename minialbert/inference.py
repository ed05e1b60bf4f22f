"""Using a trained model: load any checkpoint into any head, embed, classify, fill masks,
answer questions, and look at the attention maps.

    from minialbert.inference import Predictor
    p = Predictor.load("runs/finetune")            # a minialbert run/checkpoint folder
    p = Predictor.load("path/to/albert-base-v2")   # or a Hugging Face folder
    p.embed(["some text"], pooling="mean")         # [N, H]
    p.classify(["some text"])                      # [(label, probability), ...] per text
    p.fill_mask("sorted() returns a new [MASK].")  # top-k pieces per [MASK]
    p.answer("What does it return?", "It returns a new list.")
    p.attentions("some text")                      # [layers, heads, T, T] and the tokens

Every model here runs in inference mode (no dropout) in float32.
"""
import pathlib
import sys

import numpy as np

from .checkpoint import check_finite, check_tokenizer, load_checkpoint
from .heads import model_class
from .hf import LoadReport, assemble, from_pretrained, is_hf_folder, load_folder_tokenizer
from .memory import keep_freed_memory


def load_model(path, head=None, seed=0, ignore_mismatched_sizes=False, **config_overrides):
    """A minialbert run/checkpoint folder or a Hugging Face folder -> (model, tokenizer,
    LoadReport). With ``head``, the weights go into that head's model (missing head weights
    initialised and reported); without, into the head the checkpoint was saved with."""
    path = pathlib.Path(path)
    if is_hf_folder(path):
        model, report = from_pretrained(path, head=head, seed=seed, output_loading_info=True,
                                        verbose=False,
                                        ignore_mismatched_sizes=ignore_mismatched_sizes,
                                        **config_overrides)
        check_finite(model.params, path)
        tok = load_folder_tokenizer(path)
        check_tokenizer(tok, model.config.vocab_size)
        return model, tok, report
    cfg, params, state, _, ck = load_checkpoint(path)
    check_finite(params, ck)
    from .checkpoint import load_run_tokenizer

    tok = load_run_tokenizer(ck, cfg.vocab_size)
    check_tokenizer(tok, cfg.vocab_size, state.get("tokenizer_sha256"))
    saved = state.get("head", "pretraining")
    head = head or saved
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    report = LoadReport(str(ck), head)
    params = assemble(cfg, head, params, report, seed, np.float32, ignore_mismatched_sizes)
    return model_class(head)(cfg, params=params), tok, report


def needs_head(model, heads, what):
    """A clear error when ``model`` lacks the head a command needs."""
    if model.head not in heads:
        from .heads import model_class
        names = " or ".join(model_class(h).__name__ for h in heads)
        raise ValueError(f"{what} needs {names}; this checkpoint holds "
                         f"{type(model).__name__} (head {model.head!r})")


def fill_mask(model, tok, text, top_k=5):
    """Top-k (token, probability) for every [MASK] in the text: what transformers'
    fill-mask pipeline gives (softmax over the vocabulary at each [MASK]; the token as
    the tokenizer decodes it alone). The model: AlbertForPreTraining or AlbertForMaskedLM."""
    needs_head(model, ("pretraining", "masked_lm"), "fill-mask")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    enc = tok(text)
    ids = np.array([enc["input_ids"]])
    pos = np.flatnonzero(ids[0] == tok.mask_token_id)
    if not len(pos):
        hint = " ([MASK] is case-sensitive: write [MASK], not [mask])" \
            if "[mask]" in text.lower() else ""
        raise ValueError(f"no [MASK] in {text!r}{hint}")
    P = model.config.max_position_embeddings
    if ids.shape[1] > P:
        raise ValueError(f"{text[:40]!r}…: {ids.shape[1]} tokens, more than the model's {P} "
                         f"positions" + (f" (a [MASK] is at token {pos[-1]})" if pos[-1] >= P else ""))
    labels = np.full_like(ids, -100)
    labels[0, pos] = 0
    kw = {"sentence_order_label": np.zeros(1, np.int64)} if model.head == "pretraining" else {}
    out, _ = model.forward(ids, np.array([enc["token_type_ids"]]), labels=labels,
                           mlm_path="masked", **kw)
    p = _softmax(out["prediction_logits" if model.head == "pretraining" else "logits"])
    res = []
    for row in p:
        top = np.argsort(-row, kind="stable")[:top_k]
        res.append([(tok.decode([int(i)]) or tok.id_to_piece(int(i)), float(row[i]))
                    for i in top])
    return res


def _softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Predictor:
    def __init__(self, model, tokenizer, labels=None, batch_size=32):
        self.model, self.tok, self.batch_size = model, tokenizer, batch_size
        model.freeze()  # a predictor never trains: pack the weights once, for every call
        keep_freed_memory()  # each batch reuses the last one's pages (memory.py)
        names = model.config.extra.get("id2label")
        self.labels = labels or ([names[str(i)] for i in range(len(names))] if names else None)

    @classmethod
    def load(cls, path, head=None):
        model, tok, report = load_model(path, head)
        if report.missing:
            print(f"warning: {report}", file=sys.stderr)
        return cls(model, tok)

    @property
    def max_length(self):
        return self.model.config.max_position_embeddings

    def _batches(self, texts, pairs=None):
        pairs = pairs if pairs is not None else [None] * len(texts)
        for i in range(0, len(texts), self.batch_size):
            yield self.tok.batch_encode(texts[i:i + self.batch_size], pairs[i:i + self.batch_size],
                                        max_length=self.max_length)

    def embed(self, texts, pooling="mean", layer=-1):
        """Texts -> [N, H]. pooling: "mean" (over the real tokens), "cls" (the [CLS] hidden
        state) or "pooler" (tanh(dense([CLS])), the vector the classifiers read; needs a
        model with a pooler). ``layer`` picks a hidden state (-1: the last)."""
        if isinstance(texts, str):
            texts = [texts]
        cfg = self.model.config
        last = layer in (-1, cfg.num_hidden_layers * cfg.inner_group_num)  # else ask for all
        out = []
        for enc in self._batches(texts):
            o, _ = self.model.encode(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"],
                                     output_hidden_states=not last)
            if pooling == "pooler":
                if o["pooler_output"] is None:
                    raise ValueError(f"this {type(self.model).__name__} has no pooler; use "
                                     "pooling='mean' or 'cls'")
                out.append(o["pooler_output"])
                continue
            h = o["last_hidden_state"] if last else o["hidden_states"][layer]
            if pooling == "cls":
                out.append(h[:, 0])
            elif pooling == "mean":
                m = enc["attention_mask"][..., None].astype(h.dtype)
                out.append((h * m).sum(1) / m.sum(1))
            else:
                raise ValueError(f"pooling must be mean, cls or pooler, not {pooling!r}")
        return np.concatenate(out)

    def classify(self, texts, pairs=None, top_k=None):
        """Texts (or pairs) -> per text the labels with their probabilities, best first
        (a regression model returns its score)."""
        needs_head(self.model, ("sequence_classification",), "classify")
        if isinstance(texts, str):
            texts, pairs = [texts], None if pairs is None else [pairs]
        res = []
        for enc in self._batches(texts, pairs):
            o, _ = self.model.forward(**enc)
            if self.model.config.num_labels == 1:
                res += [float(z[0]) for z in o["logits"]]
                continue
            for p in _softmax(o["logits"]):
                order = np.argsort(-p)[:top_k]
                names = self.labels or [f"LABEL_{i}" for i in range(len(p))]
                res.append([(names[i], float(p[i])) for i in order])
        return res

    def fill_mask(self, text, top_k=5):
        return fill_mask(self.model, self.tok, text, top_k)

    def answer(self, question, context, top_k=1, max_answer_len=15, max_seq_len=None,
               doc_stride=None):
        """The best span of ``context`` answering ``question``: {"answer", "score", "start",
        "end"} (a list of top_k of them when top_k > 1); start/end are character offsets in
        ``context``. Decoded as transformers' extractive QA does (``tasks.qa_pipeline_spans``):
        the context as whitespace words, windows of ``max_seq_len`` tokens overlapping by
        ``doc_stride`` (default half a window, at most 256), the best spans of every window
        by p_start × p_end, the answer the words they cover joined by single spaces."""
        from .tasks import QAExample, TaskError, _words, qa_features, qa_pipeline_spans
        needs_head(self.model, ("question_answering",), "answer")
        if top_k < 1 or max_answer_len < 1:
            raise ValueError("top_k and max_answer_len must be at least 1")
        words, char_to_word = _words(context)
        if not words:
            raise ValueError("the context is empty")
        T = min(max_seq_len or self.max_length, self.max_length)
        overlap = min(T // 2, 256) if doc_stride is None else doc_stride
        room = T - len(self.tok.encode(question)) - 3
        if room <= overlap:
            raise ValueError(f"the question leaves {max(room, 0)} of {T} tokens for the context, "
                             f"not more than the overlap doc_stride={overlap}")
        ex = [QAExample("q", question, context, [])]
        try:
            feats, meta = qa_features(ex, self.tok, T, room - overlap, max_query_length=T,
                                      train=False)
        except TaskError as e:
            raise ValueError(str(e)) from None
        o, _ = self.model.forward(feats["input_ids"], feats["token_type_ids"],
                                  feats["attention_mask"])
        first = {}  # word -> its first character, last -> one past its last
        for c, w in enumerate(char_to_word):
            if not context[c].isspace():
                first.setdefault(w, c)
        found = []
        for w, (_, pos_to_word) in enumerate(meta):
            in_context = np.zeros(feats["input_ids"].shape[1], bool)
            in_context[list(pos_to_word)] = True
            for score, i, j in qa_pipeline_spans(o["start_logits"][w], o["end_logits"][w],
                                                 in_context, top_k, max_answer_len):
                w0, w1 = pos_to_word[i], pos_to_word[j]
                end = first[w1] + len(words[w1])
                found.append(dict(score=score, answer=" ".join(words[w0:w1 + 1]),
                                  start=first[w0], end=end))
        found = sorted(found, key=lambda a: -a["score"])[:top_k]
        if top_k == 1:
            return found[0] if found else dict(score=0.0, answer="", start=0, end=0)
        return found

    def attentions(self, text, pair=None):
        """-> (attention maps [applications, heads, T, T], the tokens)."""
        enc = self.tok(text, pair, max_length=self.max_length)
        o, _ = self.model.encode(np.array([enc["input_ids"]]), np.array([enc["token_type_ids"]]),
                                 output_attentions=True)
        tokens = [self.tok.id_to_piece(i) for i in enc["input_ids"]]
        return np.stack([a[0] for a in o["attentions"]]), tokens


# ------------------------------------------------------------------------------ CLI

def _clear_errors(cmd):
    """A ValueError (e.g. classify with a model that has no classifier) is a usage error:
    its message and exit status 2, no traceback."""
    def run(args):
        try:
            return cmd(args)
        except ValueError as e:
            print(f"minialbert: error: {e}", file=sys.stderr)
            return 2
    return run


def _save_attentions(pred, texts, path):
    arrays = {}
    for i, t in enumerate(texts):
        a, tokens = pred.attentions(t)
        arrays[f"attentions_{i}"] = a
        arrays[f"tokens_{i}"] = np.array(tokens)
    np.savez(path, **arrays)
    print(f"attention maps [layers, heads, T, T] of {len(texts)} text(s) -> {path}")


def _cmd_embed(args):
    p = Predictor.load(args.checkpoint, head=args.head)
    v = p.embed(args.text, pooling=args.pooling)
    if args.out:
        np.save(args.out, v)
        print(f"{v.shape[0]} embeddings of size {v.shape[1]} ({args.pooling}) -> {args.out}")
    else:
        for t, e in zip(args.text, v):
            print(f"{t!r}: [{', '.join(f'{x:+.4f}' for x in e[:6])}, ...] |v| = "
                  f"{np.linalg.norm(e):.3f}")
    if len(args.text) > 1:
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        print("cosine similarities:\n" + np.array2string(u @ u.T, precision=3))
    if args.attentions:
        _save_attentions(p, args.text, args.attentions)
    return 0


def _cmd_classify(args):
    p = Predictor.load(args.checkpoint)
    for t, r in zip(args.text, p.classify(args.text, top_k=args.top_k)):
        print(t)
        print("  " + (f"score {r:.4f}" if isinstance(r, float) else
                      ", ".join(f"{lab}: {prob:.3f}" for lab, prob in r)))
    if args.attentions:
        _save_attentions(p, args.text, args.attentions)
    return 0


def _cmd_answer(args):
    p = Predictor.load(args.checkpoint)
    context = pathlib.Path(args.context_file).read_text() if args.context_file else args.context
    if not context:
        print("minialbert: error: give --context or --context-file", file=sys.stderr)
        return 2
    res = p.answer(args.question, context, top_k=args.top_k, max_answer_len=args.max_answer_len)
    for a in [res] if isinstance(res, dict) else res:
        print(f"{a['answer'] or '(no answer found)'}  (score {a['score']:.4f}, characters "
              f"{a['start']}-{a['end']})")
    if args.attentions:
        _save_attentions(p, [args.question], args.attentions)
    return 0


def _cmd_fill_mask(args):
    model, tok, _ = load_model(args.checkpoint)
    needs_head(model, ("pretraining", "masked_lm"), "fill-mask")
    failed = 0
    for text in args.text:
        try:
            res = fill_mask(model, tok, text, args.top_k)
        except ValueError as e:
            print(f"minialbert: error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(text)
        for i, cands in enumerate(res):
            print(f"  [MASK] #{i + 1}: " + ", ".join(f"{t!r} {p:.3f}" for t, p in cands))
    return 2 if failed else 0


def add_commands(sub):
    from .options import Help, positive_int

    p = sub.add_parser("fill-mask", formatter_class=Help, help="top-k tokens for each [MASK] (a pretraining or "
                       "masked-LM checkpoint: ours or a Hugging Face folder)")
    p.add_argument("--checkpoint", required=True, help="minialbert run/checkpoint or Hugging "
                   "Face folder")
    p.add_argument("--top-k", type=positive_int, default=5, help="candidates per [MASK]")
    p.add_argument("text", nargs="+", help="texts with [MASK] (case-sensitive)")
    p.set_defaults(func=_clear_errors(_cmd_fill_mask))

    p = sub.add_parser("embed", formatter_class=Help, help="sentence embeddings (mean / [CLS] / pooler) of texts")
    p.add_argument("--checkpoint", required=True, help="minialbert run/checkpoint or Hugging "
                   "Face folder")
    p.add_argument("--pooling", default="mean", choices=["mean", "cls", "pooler"],
                   help="mean of the tokens, the [CLS] state, or the pooler's tanh([CLS])")
    p.add_argument("--head", default=None, help="load into this head (default: the "
                   "checkpoint's own)")
    p.add_argument("--out", default=None, help="save the [N, H] array as .npy")
    p.add_argument("--attentions", default=None, help="save attention maps to this .npz")
    p.add_argument("text", nargs="+", help="texts to embed")
    p.set_defaults(func=_clear_errors(_cmd_embed))

    p = sub.add_parser("classify", formatter_class=Help,
                       help="labels of texts with a fine-tuned classifier")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned classifier: minialbert "
                   "run/checkpoint or Hugging Face folder")
    p.add_argument("--top-k", type=positive_int, default=3, help="labels shown per text")
    p.add_argument("--attentions", default=None, help="save attention maps to this .npz")
    p.add_argument("text", nargs="+", help="texts to classify")
    p.set_defaults(func=_clear_errors(_cmd_classify))

    p = sub.add_parser("answer", formatter_class=Help,
                       help="answer a question from a passage (a fine-tuned QA model)")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned question-answering model")
    p.add_argument("--question", required=True, help="the question")
    p.add_argument("--context", default=None, help="the passage")
    p.add_argument("--context-file", default=None, help="a UTF-8 file holding the passage")
    p.add_argument("--top-k", type=positive_int, default=1, help="answers shown")
    p.add_argument("--max-answer-len", type=positive_int, default=15, help="longest answer, "
                   "in tokens")
    p.add_argument("--attentions", default=None, help="save attention maps to this .npz")
    p.set_defaults(func=_clear_errors(_cmd_answer))


__all__ = ["Predictor", "load_model", "fill_mask"]
