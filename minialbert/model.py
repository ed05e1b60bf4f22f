"""ALBERT: factorized embeddings, one shared encoder layer applied L times, and the
pretraining heads (MLM with a tied decoder, SOP), with a hand-written backward.

Legend: B batch, T sequence, E embedding, H hidden, I intermediate, V vocabulary,
N heads, L layers, G groups, n = B*T tokens.

Parameters live in one flat dict keyed by Hugging Face's names, in Hugging Face's layouts
(a dense weight is [out, in]), so a state dict moves between the two without renaming.

The heart of ALBERT's backward pass is in ``encoder_backward``: the encoder applies the
same arrays L times, and the backward of each application *adds* its gradient into the
one shared gradient array. ``grads[w] += ...`` is all that cross-layer sharing asks of
a backward pass (chapter 07).
"""
import numpy as np

from .config import AlbertConfig
from .kernels import (cross_entropy, dropout_backward, dropout_forward, embedding_backward,
                      embedding_forward, mask_bias, matmul_nn, matmul_nt, matmul_tn)
from .kernels.act import activation, tanh_backward, tanh_forward
from .kernels.embedding import check_ids
from .kernels.matmul import bias_add, bias_grad
from .layers import (Dropout, Sequences, Weights, attention_block_backward,
                     attention_block_forward, dense_backward, dense_forward, ffn_block_backward,
                     ffn_block_forward, layernorm_bwd, layernorm_fwd)

EMB = "albert.embeddings."
ENC = "albert.encoder."
WORD = EMB + "word_embeddings.weight"

_ATTN = [f"attention.{m}.{p}" for m in ("query", "key", "value", "dense") for p in ("weight", "bias")]
_ATTN += ["attention.LayerNorm.weight", "attention.LayerNorm.bias"]
_FFN = ["ffn.weight", "ffn.bias", "ffn_output.weight", "ffn_output.bias",
        "full_layer_layer_norm.weight", "full_layer_layer_norm.bias"]


# ------------------------------------------------------------------------------ names

def layer_prefixes(cfg, l, i=0):
    """Where application (layer l, inner layer i) reads its attention and FFN weights.

    all/none: Hugging Face's group g(l) = int(l / (L/G)) ("none" is G = L);
    attention: attention shared (group 0), FFN per layer under our own name;
    ffn: FFN shared (group 0), attention per layer under our own name."""
    shared = f"{ENC}albert_layer_groups.{cfg.group_of(l)}.albert_layers.{i}."
    own = f"{ENC}unshared_layers.{l}."
    if cfg.sharing == "attention":
        return shared + "attention.", own
    if cfg.sharing == "ffn":
        return own + "attention.", shared
    return shared + "attention.", shared


# Which parameters each model holds, as Hugging Face's classes do: AlbertModel has a pooler;
# the heads that read only the sequence output (masked LM, token classification, question
# answering) build their AlbertModel without one (add_pooling_layer=False).
HEADS = ("base", "pretraining", "masked_lm", "sequence_classification",
         "token_classification", "question_answering", "multiple_choice")
POOLED = ("base", "pretraining", "sequence_classification", "multiple_choice")


def head_shapes(cfg, head):
    """name -> shape of a head's own parameters."""
    V, E, H, C = cfg.vocab_size, cfg.embedding_size, cfg.hidden_size, cfg.num_labels
    mlm = {"predictions.bias": (V,), "predictions.dense.weight": (E, H),
           "predictions.dense.bias": (E,), "predictions.LayerNorm.weight": (E,),
           "predictions.LayerNorm.bias": (E,)}  # the decoder is the word table (tied)
    if head == "pretraining":
        return dict(mlm, **{"sop_classifier.classifier.weight": (C, H),
                            "sop_classifier.classifier.bias": (C,)})
    if head == "masked_lm":
        return mlm
    if head in ("sequence_classification", "token_classification"):
        return {"classifier.weight": (C, H), "classifier.bias": (C,)}
    if head == "question_answering":
        return {"qa_outputs.weight": (C, H), "qa_outputs.bias": (C,)}
    if head == "multiple_choice":
        return {"classifier.weight": (1, H), "classifier.bias": (1,)}
    if head == "base":
        return {}
    raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")


def parameter_shapes(cfg, head="pretraining"):
    """name -> shape for every parameter of the model with the given head."""
    V, E, H, I, P = (cfg.vocab_size, cfg.embedding_size, cfg.hidden_size,
                     cfg.intermediate_size, cfg.max_position_embeddings)
    heads = head_shapes(cfg, head)
    s = {WORD: (V, E), EMB + "position_embeddings.weight": (P, E),
         EMB + "token_type_embeddings.weight": (cfg.type_vocab_size, E),
         EMB + "LayerNorm.weight": (E,), EMB + "LayerNorm.bias": (E,),
         ENC + "embedding_hidden_mapping_in.weight": (H, E),
         ENC + "embedding_hidden_mapping_in.bias": (H,)}
    local = {"attention.query.weight": (H, H), "attention.key.weight": (H, H),
             "attention.value.weight": (H, H), "attention.dense.weight": (H, H),
             "ffn.weight": (I, H), "ffn.bias": (I,), "ffn_output.weight": (H, I)}
    for l in range(cfg.num_hidden_layers):
        for i in range(cfg.inner_group_num):
            a, f = layer_prefixes(cfg, l, i)
            for n in _ATTN:
                s[a + n[len("attention."):]] = local.get(n, (H,))
            for n in _FFN:
                s[f + n] = local.get(n, (H,))
    if head in POOLED:
        s["albert.pooler.weight"] = (H, H)
        s["albert.pooler.bias"] = (H,)
    s.update(heads)
    return s


def count_parameters(cfg, head="base"):
    """Parameters per component (each shared tensor counted once, as in the paper)."""
    parts = {}
    for name, shape in parameter_shapes(cfg, head).items():
        if name.startswith(EMB):
            part = "embeddings"
        elif "embedding_hidden_mapping_in" in name:
            part = "embedding projection E->H"
        elif ".attention." in name:
            part = "encoder attention"
        elif name.startswith(ENC):
            part = "encoder FFN"
        elif name.startswith("albert.pooler"):
            part = "pooler"
        else:
            part = "heads"
        parts[part] = parts.get(part, 0) + int(np.prod(shape))
    parts["total"] = sum(parts.values())
    return parts


def init_params(cfg, seed=0, dtype=np.float32, head="pretraining"):
    """Hugging Face's initialisation: weights N(0, initializer_range), LayerNorm 1/0,
    biases 0, and the word-embedding row pad_token_id zeroed."""
    rng = np.random.default_rng(seed)
    p = {}
    for name, shape in parameter_shapes(cfg, head).items():
        if "LayerNorm" in name or "layer_norm" in name:
            p[name] = (np.ones if name.endswith("weight") else np.zeros)(shape, dtype)
        elif name.endswith("bias"):
            p[name] = np.zeros(shape, dtype)
        else:
            p[name] = (rng.standard_normal(shape) * cfg.initializer_range).astype(dtype)
    p[WORD][cfg.pad_token_id] = 0
    return p


# The Hugging Face folder format (hf.py) sits above the model on the import ladder: it
# puts its reader and writer here when it is imported (the package's __init__ imports
# it), so that ``Model.from_pretrained`` works while model.py imports nothing above it.
FOLDER_FORMAT = {}


def zeros_like_params(params):
    return {k: np.zeros_like(v) for k, v in params.items()}


# ------------------------------------------------------------------------------ embeddings

def embeddings_forward(params, cfg, input_ids, token_type_ids, drop, rows=None):
    # input_ids, token_type_ids: [B, T] -> [n, E] -> (E->H) -> [n, H]; with ``rows`` (flat
    # indices of the real tokens) only those: n = len(rows)
    B, T = input_ids.shape
    if T > cfg.max_position_embeddings:
        raise ValueError(f"sequence length {T} is longer than max_position_embeddings="
                         f"{cfg.max_position_embeddings} (the position table)")
    ids = check_ids(input_ids, cfg.vocab_size).reshape(-1).astype(np.int64)
    tts = check_ids(token_type_ids, cfg.type_vocab_size, "token_type_ids").reshape(-1)
    tts = tts.astype(np.int64)
    pos = np.tile(np.arange(T, dtype=np.int64), B)
    if rows is not None:
        ids, tts, pos = ids[rows], tts[rows], pos[rows]
    x = embedding_forward(ids, params[WORD])
    x += embedding_forward(tts, params[EMB + "token_type_embeddings.weight"])
    x += embedding_forward(pos, params[EMB + "position_embeddings.weight"])
    x, ln = layernorm_fwd(x, params, EMB + "LayerNorm", cfg.layer_norm_eps)
    p = drop.p(cfg.hidden_dropout_prob)
    x, keep = dropout_forward(x, p, drop.key() if p > 0 else 0)
    h, _ = dense_forward(x, params, ENC + "embedding_hidden_mapping_in")
    return h, (ids, tts, pos, ln, keep, p, x)


def embeddings_backward(dh, cache, params, grads, cfg):  # dh: [n, H]
    ids, tts, pos, ln, keep, p, x = cache
    dx = dense_backward(dh, x, params, grads, ENC + "embedding_hidden_mapping_in")
    dx = dropout_backward(dx, keep, p)
    dx = layernorm_bwd(dx, ln, params, grads, EMB + "LayerNorm")
    # scatter-add into the three tables; the padding row gets no lookup gradient (as HF)
    embedding_backward(ids, dx, grads[WORD], cfg.pad_token_id)
    embedding_backward(tts, dx, grads[EMB + "token_type_embeddings.weight"], -1)
    embedding_backward(pos, dx, grads[EMB + "position_embeddings.weight"], -1)


# ------------------------------------------------------------------------------ encoder

def encoder_forward(h, params, cfg, seqs, drop, weights=None):
    # h: [n, H] -> [n, H]; L steps, step l runs group g(l)'s inner_group_num layers.
    # seqs: layers.Sequences (padded with a mask bias, or packed without padding).
    # The layers read their matrices through Weights: each packed for the GEMM once, used by
    # all L applications (sharing makes this pay L times over); the backward reuses it.
    # weights: a Weights kept across calls (AlbertModel.freeze, for inference), else new.
    weights = weights if weights is not None else Weights(params)
    hidden_states, caches = [h], []
    for l in range(cfg.num_hidden_layers):
        for i in range(cfg.inner_group_num):
            attn_name, ffn_name = layer_prefixes(cfg, l, i)
            a, ca = attention_block_forward(h, weights, attn_name, seqs, cfg, drop)
            h, cf = ffn_block_forward(a, weights, ffn_name, cfg)
            caches.append((attn_name, ffn_name, ca, cf))
            hidden_states.append(h)  # one per layer application, as Hugging Face returns
    return h, hidden_states, (weights, caches)


def encoder_backward(dh, cache, grads, cfg):  # dh: [n, H] -> [n, H]
    # Walk the layer applications in reverse. With shared weights, attn_name/ffn_name are
    # the same for every application, so each application's backward ADDS its gradient
    # into the same grads[...] arrays: the gradient of a shared weight is the sum over
    # its L uses. (dense_backward and layernorm_bwd accumulate with +=.)
    weights, caches = cache  # the forward's Weights: its packed matrices, reused here
    for attn_name, ffn_name, ca, cf in reversed(caches):
        da = ffn_block_backward(dh, cf, weights, grads, ffn_name, cfg)
        dh = attention_block_backward(da, ca, weights, grads, attn_name, cfg)
    return dh


# ------------------------------------------------------------------------------ the model

class AlbertModel:
    """Embeddings, encoder, pooler. ``encode`` returns outputs and a cache;
    ``encode_backward(dseq, dpooled, cache, grads)`` adds into ``grads``.

    Every model class names its ``head`` (model.HEADS); its parameters are exactly
    ``parameter_shapes(config, head)``, the names Hugging Face's class of that head has."""

    head = "base"

    def __init__(self, config, params=None, seed=0, dtype=np.float32):
        self.config = config if isinstance(config, AlbertConfig) else AlbertConfig(**config)
        if params is None:
            params = init_params(self.config, seed, dtype, self.head)
        else:
            expected = parameter_shapes(self.config, self.head)
            missing = sorted(set(expected) - set(params))
            wrong = sorted(k for k in expected if k in params
                           and tuple(params[k].shape) != tuple(expected[k]))
            if missing or wrong:
                raise ValueError(
                    f"{type(self).__name__}: the parameters do not fit the config (missing "
                    f"{missing[:3]}{'…' if len(missing) > 3 else ''}; wrong shape "
                    + ", ".join(f"{k} {params[k].shape} != {expected[k]}" for k in wrong[:3])
                    + ")")
            params = {k: params[k] for k in expected}
        self.params = params

    @property
    def dtype(self):
        return self.params[WORD].dtype

    @classmethod
    def from_pretrained(cls, folder, **kw):
        """A Hugging Face ALBERT folder -> this class (hf.from_pretrained: the report of
        missing/unexpected weights, num_labels=..., allow_pickle=...)."""
        return FOLDER_FORMAT["read"](folder, head=cls.head, **kw)

    def save_pretrained(self, folder, tokenizer=None):
        """Write a Hugging Face folder (config.json, model.safetensors, spiece.model)."""
        return FOLDER_FORMAT["write"](self, folder, tokenizer)

    # Run the encoder on the real tokens only (the padding removed: no layer spends work on
    # it). Off by default: outputs at padded positions are then zeros, not the values
    # Hugging Face computes there (which nothing should read); loss and gradients are the
    # same. The trainers turn it on. A head whose loss reads padded positions (question
    # answering: the softmax over start positions spans the padding, as in Hugging Face)
    # sets unpad_exact = False and always runs padded.
    unpad = False
    unpad_exact = True
    _frozen = None

    def freeze(self):
        """Promise that the weights will not change (inference): the encoder's matrices are
        then packed for the GEMM once and kept for every later call, instead of once per
        forward pass — on a single sentence the packing costs as much as the products.
        ``unfreeze()`` before training again (a frozen model would keep using the old
        packs). Returns self."""
        self._frozen = Weights(self.params)
        return self

    def unfreeze(self):
        self._frozen = None
        return self

    def _sequences(self, attention_mask, bias, output_attentions):
        """(Sequences, rows): padded, or packed without padding (rows = the flat indices of
        the real tokens) when unpad is on, some token is padding, and every row keeps its
        position 0 (the pooler reads it) — otherwise padded, exactly as Hugging Face."""
        B, T = attention_mask.shape
        real = attention_mask != 0
        if (not self.unpad or not self.unpad_exact or output_attentions or real.all()
                or not real[:, 0].all()):
            return Sequences(B, T, bias), None
        lens = real.sum(1).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        return Sequences(B, T, starts=starts, lens=lens), np.flatnonzero(real.reshape(-1))

    def encode(self, input_ids, token_type_ids=None, attention_mask=None, drop=None,
               output_attentions=False):
        cfg, params = self.config, self.params
        input_ids = np.asarray(input_ids)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = np.zeros((B, T), np.int64)
        if attention_mask is None:
            attention_mask = np.ones((B, T), np.int64)
        token_type_ids = np.asarray(token_type_ids).reshape(B, T)
        attention_mask = np.asarray(attention_mask).reshape(B, T)
        drop = drop or Dropout()
        bias = mask_bias(attention_mask, self.dtype)  # [B, T]: 0 or finfo.min per key
        seqs, rows = self._sequences(attention_mask, bias, output_attentions)
        h, ce = embeddings_forward(params, cfg, input_ids, token_type_ids, drop, rows)
        h, hidden_states, enc = encoder_forward(h, params, cfg, seqs, drop, self._frozen)

        def padded(a):  # [n, H] -> [B, T, H]
            return _scatter_rows(a, rows, B, T, self.dtype).reshape(B, T, -1)

        out = {"last_hidden_state": padded(h), "pooler_output": None,
               "hidden_states": [padded(s) for s in hidden_states]}
        first = pooled = None
        if "albert.pooler.weight" in params:  # tanh(dense(hidden state of [CLS]))
            first = np.ascontiguousarray(h[seqs.starts] if seqs.packed else
                                         h.reshape(B, T, -1)[:, 0])  # [B, H]
            z, _ = dense_forward(first, params, "albert.pooler")
            pooled = tanh_forward(z.reshape(-1)).reshape(z.shape)
            out["pooler_output"] = pooled
        if output_attentions:
            out["attentions"] = [c[2][4] for c in enc[1]]
        return out, (ce, enc, first, pooled, B, T, seqs, rows)

    def encode_backward(self, dseq, dpooled, cache, grads):
        # dseq: [B*T, H] (or None), dpooled: [B, H] (or None) -> grads +=
        ce, enc, first, pooled, B, T, seqs, rows = cache
        H = self.config.hidden_size
        n = B * T if rows is None else len(rows)
        if dseq is None:
            dh = np.zeros((n, H), self.dtype)
        elif rows is None:
            dh = dseq.reshape(n, H).copy()
        else:  # padded positions are constants (zeros) when packed: their gradient drops
            dh = dseq.reshape(B * T, H)[rows]
        if dpooled is not None:
            dz = tanh_backward(dpooled.reshape(-1), pooled.reshape(-1)).reshape(pooled.shape)
            dfirst = dense_backward(dz, first, self.params, grads, "albert.pooler")
            if seqs.packed:
                dh[seqs.starts] += dfirst
            else:
                dh.reshape(B, T, H)[:, 0] += dfirst
        dh = encoder_backward(dh, enc, grads, self.config)
        embeddings_backward(dh, ce, self.params, grads, self.config)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                output_attentions=False, **_):
        """AlbertModel's outputs: last_hidden_state [B,T,H], pooler_output [B,H],
        hidden_states (L*inner + 1), attentions on request."""
        return self.encode(input_ids, token_type_ids, attention_mask, None, output_attentions)


# ------------------------------------------------------------------------------ MLM head

def mlm_head_forward(x, params, cfg):
    # x: [r, H] -> dense H->E, activation, LayerNorm -> decoder E->V tied to the word
    # table -> logits: [r, V]
    act_f, _ = activation(cfg.hidden_act)
    m, _ = dense_forward(x, params, "predictions.dense")  # [r, E]
    g = act_f(m.reshape(-1)).reshape(m.shape)
    e, ln = layernorm_fwd(g, params, "predictions.LayerNorm", cfg.layer_norm_eps)
    logits = matmul_nt(e, params[WORD])  # [r, V] = e @ word_embeddings.T
    bias_add(logits, params["predictions.bias"])
    return logits, (x, m, e, ln)


def mlm_head_backward(dlogits, cache, params, grads, cfg):  # dlogits: [r, V] -> dx: [r, H]
    x, m, e, ln = cache
    # The decoder is the word table: its gradient is the second of the two contributions
    # the word embeddings receive (the first is the lookup's scatter-add).
    bias_grad(dlogits, grads["predictions.bias"])
    matmul_tn(dlogits, e, out=grads[WORD], accumulate=True)  # dWord += dlogits.T @ e
    de = matmul_nn(dlogits, params[WORD])  # [r, E]
    dg = layernorm_bwd(de, ln, params, grads, "predictions.LayerNorm")
    _, act_b = activation(cfg.hidden_act)
    dm = act_b(dg.reshape(-1), m.reshape(-1)).reshape(dg.shape)
    return dense_backward(dm, x, params, grads, "predictions.dense")


def _mlm_rows(seq, labels, mlm_path):
    """The rows the MLM head predicts: all of [B*T] or only those with a label."""
    B, T, H = seq.shape
    x = seq.reshape(B * T, H)
    flat = None if labels is None else np.asarray(labels).reshape(-1).astype(np.int64)
    if mlm_path == "masked":
        if flat is None:
            raise ValueError("mlm_path='masked' needs labels (it predicts only there)")
        rows = np.flatnonzero(flat != -100)
        return np.ascontiguousarray(x[rows]), rows, flat
    if mlm_path == "all":
        return x, None, flat
    raise ValueError(f"mlm_path must be 'all' or 'masked', got {mlm_path!r}")


def _scatter_rows(dx, rows, B, T, dtype):
    if rows is None:
        return dx
    dseq = np.zeros((B * T, dx.shape[1]), dtype)  # masked path: rows back into [n, H]
    dseq[rows] = dx
    return dseq


class AlbertForMaskedLM(AlbertModel):
    """AlbertModel (no pooler) + the MLM head; loss = mean cross-entropy over labels != -100.
    ``mlm_path`` as in AlbertForPreTraining."""

    head = "masked_lm"

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                train=False, seed=0, step=0, mlm_path="all", output_attentions=False):
        drop = Dropout(train, seed, step)
        out, enc = self.encode(input_ids, token_type_ids, attention_mask, drop, output_attentions)
        x, rows, flat = _mlm_rows(out["last_hidden_state"], labels, mlm_path)
        logits, mc = mlm_head_forward(x, self.params, self.config)
        out.update(logits=logits, mlm_rows=rows)
        cache = dict(enc=enc, mlm=mc, rows=rows, d=None)
        if flat is not None:
            out["loss"], cache["d"], _ = cross_entropy(logits, flat if rows is None else flat[rows])
        return out, cache

    def backward(self, cache, grads=None, dlogits=None, scale=1.0):
        grads = zeros_like_params(self.params) if grads is None else grads
        d = _upstream(cache["d"], dlogits, scale, self.dtype)
        dx = mlm_head_backward(d, cache["mlm"], self.params, grads, self.config)
        B, T = cache["enc"][4:6]
        self.encode_backward(_scatter_rows(dx, cache["rows"], B, T, self.dtype), None,
                             cache["enc"], grads)
        return grads


def _upstream(stored, given, scale, dtype):
    """The gradient a head's backward starts from: the one given, or the loss's own
    (stored by forward), times ``scale`` (1/k for k accumulated micro-batches)."""
    d = stored if given is None else given
    if d is None:
        raise ValueError("backward needs a forward with labels (or an upstream gradient)")
    return d * dtype.type(scale) if scale != 1.0 else d


class AlbertForPreTraining(AlbertModel):
    """AlbertModel + MLM head (decoder tied to the word embeddings) + SOP head.

    loss = MLM cross-entropy (mean over labels != -100) + sop_weight * SOP cross-entropy.

    ``mlm_path="all"`` computes logits at every position (Hugging Face's way);
    ``mlm_path="masked"`` only at positions whose label is not -100 (the original TF
    code's way: far cheaper, [n_masked, V] instead of [B*T, V]). Both give the same loss,
    gradients and logits at the masked positions."""

    head = "pretraining"

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                sentence_order_label=None, train=False, seed=0, step=0, mlm_path="all",
                output_attentions=False):
        cfg, params = self.config, self.params
        drop = Dropout(train, seed, step)
        out, enc_cache = self.encode(input_ids, token_type_ids, attention_mask, drop,
                                     output_attentions)
        seq = out["last_hidden_state"]
        B, T, H = seq.shape
        x, rows, flat_labels = _mlm_rows(seq, labels, mlm_path)
        logits, mc = mlm_head_forward(x, params, cfg)
        # SOP head: dropout, classifier on the pooled output
        pooled = out["pooler_output"]
        p = drop.p(cfg.classifier_dropout_prob)
        pd, keep = dropout_forward(pooled, p, drop.key() if p > 0 else 0)
        sop_logits, _ = dense_forward(pd, params, "sop_classifier.classifier")
        out.update(prediction_logits=logits, sop_logits=sop_logits, mlm_rows=rows)
        cache = dict(enc=enc_cache, mlm=mc, rows=rows, pd=pd, keep=keep, p=p, B=B, T=T,
                     dlogits=None, dsop=None)
        if flat_labels is not None and sentence_order_label is not None:
            lab = flat_labels if rows is None else flat_labels[rows]
            mlm_loss, dlogits, _ = cross_entropy(logits, lab)
            sol = np.asarray(sentence_order_label).reshape(-1)
            sop_loss, dsop, _ = cross_entropy(sop_logits, sol, scale=cfg.sop_weight)
            out["mlm_loss"], out["sop_loss"] = mlm_loss, sop_loss
            out["loss"] = self.dtype.type(mlm_loss + self.dtype.type(cfg.sop_weight) * sop_loss)
            cache["dlogits"], cache["dsop"] = dlogits, dsop
        return out, cache

    def backward(self, cache, grads=None, dlogits=None, dsop_logits=None):
        """Gradients of the loss (or of given upstream gradients) for every parameter."""
        cfg, params = self.config, self.params
        grads = zeros_like_params(params) if grads is None else grads
        dlogits = cache["dlogits"] if dlogits is None else dlogits
        dsop = cache["dsop"] if dsop_logits is None else dsop_logits
        if dlogits is None or dsop is None:
            raise ValueError("backward needs a forward with labels and sentence_order_label")
        # SOP head
        dpd = dense_backward(dsop, cache["pd"], params, grads, "sop_classifier.classifier")
        dpooled = dropout_backward(dpd, cache["keep"], cache["p"])
        # MLM head
        dx = mlm_head_backward(dlogits, cache["mlm"], params, grads, cfg)
        dseq = _scatter_rows(dx, cache["rows"], cache["B"], cache["T"], self.dtype)
        self.encode_backward(dseq, dpooled, cache["enc"], grads)
        return grads
