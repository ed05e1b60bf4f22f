"""ALBERT's body: factorized embeddings, one shared encoder layer applied L times, the
pooler — AlbertModel, with a hand-written backward. The heads are in heads.py.

Legend: B batch, T sequence, E embedding, H hidden, I intermediate, V vocabulary,
N heads, L layers, G groups, n = B*T tokens.

Parameters live in one flat dict keyed by Hugging Face's names, in Hugging Face's layouts
(a dense weight is [out, in]): params.py.

The heart of ALBERT's backward pass is in ``encoder_backward``: the encoder applies the
same arrays L times, and the backward of each application *adds* its gradient into the
one shared gradient array. ``grads[w] += ...`` is all that cross-layer sharing asks of
a backward pass (chapter 07).
"""
from typing import NamedTuple

import numpy as np

from .config import AlbertConfig
from .kernels import (dropout_backward, dropout_forward, embedding_backward, embedding_forward,
                      get_threads, mask_bias)
from .kernels import matmul as _matmul
from .kernels._base import aligned_empty_py
from .kernels.act import tanh_backward, tanh_forward
from .kernels import attention as _attention
from .kernels.encoder import encoder_by_sequence, encoder_layered
from .kernels.embedding import check_ids
from .layers import (Dropout, LayerNormCache, Sequences, Weights, attention_block_backward,
                     attention_block_forward, dense_backward, dense_forward, ffn_block_backward,
                     ffn_block_forward, layernorm_bwd, layernorm_fwd)
from .params import EMB, ENC, POOLER, WORD, body_shapes, init_weights, layer_prefixes

# The Hugging Face folder format (hf.py) sits above the model on the import ladder: it
# puts its reader and writer here when it is imported (the package's __init__ imports
# it), so that ``Model.from_pretrained`` works while model.py imports nothing above it.
FOLDER_FORMAT = {}


# ------------------------------------------------------------------------------ embeddings

class EmbeddingsCache(NamedTuple):
    ids: np.ndarray  # [n] word ids, token type ids and positions of the rows
    tts: np.ndarray
    pos: np.ndarray
    ln: LayerNormCache
    keep: np.ndarray  # the dropout mask, and its rate
    p: float
    x: np.ndarray  # [n, E] the embeddings after dropout: the projection's input


def embeddings_forward(params, cfg, input_ids, token_type_ids, drop, rows=None, weights=None):
    # input_ids, token_type_ids: [B, T] -> [n, E] -> (E->H) -> [n, H]; with ``rows`` (flat
    # indices of the real tokens) only those: n = len(rows). weights: a frozen model's
    # Weights (its E->H matrix packed once), else the projection packs it per call.
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
    h, _ = dense_forward(x, params if weights is None else weights,
                         ENC + "embedding_hidden_mapping_in")
    return h, EmbeddingsCache(ids, tts, pos, ln, keep, p, x)


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

class LayerCache(NamedTuple):  # one layer application
    attn_name: str  # where it read its attention and FFN weights (params.layer_prefixes)
    ffn_name: str
    attention: object  # layers.AttentionCache
    ffn: object  # layers.FFNCache


class EncoderCache(NamedTuple):
    weights: Weights  # the forward's packed matrices, reused by the backward
    layers: list  # a LayerCache per layer application, in order


def encoder_forward(h, params, cfg, seqs, drop, weights=None, read=None, keep=True,
                    hidden=True, by_sequence=None):
    # h: [n, H] -> [n, H]; L steps, step l runs group g(l)'s inner_group_num layers.
    # seqs: layers.Sequences (padded with a mask bias, or packed without padding).
    # The layers read their matrices through Weights: each packed for the GEMM once, used by
    # all L applications (sharing makes this pay L times over); the backward reuses it.
    # weights: a Weights kept across calls (AlbertModel.freeze, for inference), else new.
    # read: None, or the sorted rows of the output the caller will read. The last layer
    # application then makes only those (its keys and values still come from every row:
    # attention_block_forward); the output's other rows are NaN, so that reading one shows.
    # keep: False for a pass no backward follows (a frozen model's): no layer's activations
    # are kept for a backward, so each layer's are freed while the next one runs, and the
    # pass holds about one layer's at a time, not all of them (base, a batch of 32 x 128:
    # 2.6 GB more than a one-sentence call, against Hugging Face's 0.3 GB under
    # inference_mode). The cache then has no layers, and encode_backward refuses it. Nor
    # does such a pass write what only a backward reads: attention keeps each head's
    # probabilities in a scratch block, not in a [B, N, T, T] array, the FFN's gelu_new
    # is applied in place by its GEMM's epilogue (layers.dense_act_forward), and so is each
    # block's LayerNorm, by the GEMM before it (layers.dense_norm_forward).
    # hidden: keep every layer application's output (hidden_states: [h_0, ..., h_L]);
    # False: hidden_states is None, and no layer's output outlives the next layer's.
    # by_sequence: such a pass (keep and hidden False, no read, no dropout) over a batch
    # runs each sequence through every layer on one thread while its activations stay in
    # that core's cache (kernels/encoder.py; the same bits), where _by_sequence finds it
    # pays, and otherwise (one sentence, say; one shared layer, as ALBERT's) runs this loop
    # compiled as one call (encoder_layered: the same kernels and bits, without the Python
    # between them);
    # None: decide so, False: this loop, kernel by kernel (what a profile times), True: by
    # sequence where it can run.
    weights = weights if weights is not None else Weights(params)
    if by_sequence is None:
        by_sequence = None if BY_SEQUENCE else False
    if (not keep and not hidden and read is None and by_sequence is not False
            and _compiled_pass_applies(h, cfg, drop)):
        y = _by_sequence(h, weights, cfg, seqs, force=bool(by_sequence))
        if y is None and by_sequence is None:
            y = _layered(h, weights, cfg, seqs)
        if y is not None:
            return y, None, EncoderCache(weights, [])
    hidden_states, caches = [h] if hidden else None, []
    last = (cfg.num_hidden_layers - 1, cfg.inner_group_num - 1)
    for l in range(cfg.num_hidden_layers):
        for i in range(cfg.inner_group_num):
            attn_name, ffn_name = layer_prefixes(cfg, l, i)
            rows = read if (l, i) == last else None
            a, ca = attention_block_forward(h, weights, attn_name, seqs, cfg, drop, rows, keep)
            y, cf = ffn_block_forward(a, weights, ffn_name, cfg, keep)
            if rows is not None:
                y = _unread_nan(y, rows, h.shape[0])
            h = y
            if keep:
                caches.append(LayerCache(attn_name, ffn_name, ca, cf))
            del ca, cf  # (else this layer's activations live until the next one's replace them)
            if hidden:
                hidden_states.append(h)  # one per layer application, as Hugging Face's
    return h, hidden_states, EncoderCache(weights, caches)


# The by-sequence encoder's limit on one layer application's weights: each thread reads
# them all again for every sequence, from L3. Measured on a 2-core EPYC (Zen 4, 32 MiB L3),
# a batch of 32 x 128 against the layered pass: tiny (3 MiB of weights) 1.10x, base (27
# MiB) 1.00-1.02x.
BY_SEQUENCE = True  # False: every pass layer by layer from Python (a profile's kernel by
# kernel view): neither by sequence nor compiled as one call
BY_SEQUENCE_WEIGHT_BYTES = 16 << 20
BY_SEQUENCE_BALANCE = 1.05  # the busiest thread's work at most this over an even share


def by_sequence_groups(lens, threads, per_token, per_pair):
    """Deal sequences of lengths ``lens`` out to ``threads`` threads, each sequence's
    work per_token L + per_pair L^2 (its products and its attention), the longest first,
    each to the thread with the least so far. -> (groups, order): thread t runs the
    sequences order[groups[t]:groups[t+1]] (in their batch order); None when the busiest
    thread would get more than BY_SEQUENCE_BALANCE times an even share (three equal
    sequences on two threads: 2 against 1.5)."""
    lens = np.asarray(lens, dtype=np.int64)
    n_groups = min(threads, len(lens))
    work = lens * (per_token + per_pair * lens).astype(np.float64)
    loads, members = np.zeros(n_groups), [[] for _ in range(n_groups)]
    for b in np.argsort(-work, kind="stable"):
        t = int(np.argmin(loads))
        loads[t] += work[b]
        members[t].append(b)
    if loads.max() > BY_SEQUENCE_BALANCE * work.sum() / threads:
        return None
    order = np.array([b for m in members for b in sorted(m)], dtype=np.int64)
    groups = np.cumsum([0] + [len(m) for m in members]).astype(np.int64)
    return groups, order


def _compiled_pass_applies(h, cfg, drop):
    # the encoder's compiled passes (kernels/encoder.py) run no dropout and gelu_new only,
    # through our GEMM (not the BLAS switch), on at least one row
    return (drop.p(cfg.attention_probs_dropout_prob) == 0 and drop.p(cfg.hidden_dropout_prob) == 0
            and cfg.hidden_act == "gelu_new" and not _matmul._USE_BLAS and h.shape[0] > 0)


def _applications(cfg):
    # -> (unique, apps): the distinct (attention, FFN) weight prefixes, and for each layer
    # application the index of the one it uses
    names = [layer_prefixes(cfg, l, i) for l in range(cfg.num_hidden_layers)
             for i in range(cfg.inner_group_num)]
    unique = list(dict.fromkeys(names))
    return unique, np.array([unique.index(n) for n in names], dtype=np.int64)


def _by_sequence(h, weights, cfg, seqs, force=False):
    # encoder_forward's pass by sequence (kernels/encoder.py), or None for one sequence
    # or, unless forced, where it would not pay (weights over BY_SEQUENCE_WEIGHT_BYTES, a
    # batch the threads cannot share evenly). (_compiled_pass_applies first.)
    H, I = cfg.hidden_size, cfg.intermediate_size
    starts, lens, bias, _ = seqs._rows(h.dtype)
    if len(lens) < 2:
        return None
    if not force and (4 * H * H + 2 * H * I) * h.dtype.itemsize > BY_SEQUENCE_WEIGHT_BYTES:
        return None
    threads = get_threads()
    dealt = by_sequence_groups(lens, threads, 4 * H * H + 2 * H * I, 2 * H)
    if dealt is None:
        if not force:
            return None
        dealt = by_sequence_groups(lens, 1, 1, 0)  # forced: one thread takes them all
    unique, apps = _applications(cfg)
    Lmax = max(int(np.max(lens)), 1)
    blk = {}
    for kind, N, K in (("qkv", 3 * H, H), ("out", H, H), ("ffn", I, H), ("ffn_out", H, I)):
        blk[kind] = _matmul.blocking(h.dtype, Lmax, N, b_packed=True, b_trans=True, K=K)
    tiles = np.array([[blk[k]["code"], blk[k]["MR"], blk[k]["NR"]]
                      for k in ("qkv", "out", "ffn", "ffn_out")], dtype=np.int64)
    KC = blk["qkv"]["KC"]
    att = _matmul.blocking(h.dtype, Lmax, H // cfg.num_attention_heads)
    att_tile = np.array([att["code"], att["MR"], att["NR"]], dtype=np.int64)

    key = ("by sequence", tuple(unique), tiles.tobytes(), KC)
    stacked = weights._qkv.get(key)  # made once per Weights (a frozen model keeps it)
    if stacked is None:
        stacked = weights._qkv[key] = _stacked_weights(weights, unique, blk)
    return encoder_by_sequence(h, *dealt, starts, lens, bias, apps, cfg.num_attention_heads,
                               float(cfg.layer_norm_eps), *stacked, tiles, KC, att_tile)


def _layered(h, weights, cfg, seqs):
    # encoder_forward's loop, frozen, as one compiled call (kernels/encoder.encoder_layered):
    # each product with the blocking gemm would give it (matmul._plan) and its weights'
    # panels laid out for that, attention with attention_forward_qkv's tile: the same
    # kernels, the same bits. None where the layers do not all share one set of weights.
    # (_compiled_pass_applies first.)
    unique, apps = _applications(cfg)
    if len(unique) > 1:  # layers that do not share weights: their panels stacked would be
        return None  # a copy of them all (one shared layer's are a view); the loop in Python
    n, H = h.shape
    I = cfg.intermediate_size
    starts, lens, bias, T = seqs._rows(h.dtype)
    threads = get_threads()
    plans, blk, a_size = [], {}, 1
    for kind, N, K in (("qkv", 3 * H, H), ("out", H, H), ("ffn", I, H), ("ffn_out", H, I)):
        run, code, MR, NR, KC, MC, NC, a_need, _, _, _, copy_a, b = _matmul._plan(
            h.dtype, n, N, K, _matmul.ISA, threads, None, True, False, True)
        plans.append((run is _matmul._gemm_fused, code, MR, NR, KC, MC, NC, copy_a))
        blk[kind], a_size = b, max(a_size, a_need)
    plans = np.array(plans, dtype=np.int64)
    att = np.array(_attention._tiles(h.dtype, max(int(np.max(lens)), 1),
                                     H // cfg.num_attention_heads), dtype=np.int64)
    key = ("layered", tuple(unique), plans[:, 1:5].tobytes())  # (the panels' layout)
    stacked = weights._qkv.get(key)  # made once per Weights (a frozen model keeps it)
    if stacked is None:
        stacked = weights._qkv[key] = _stacked_weights(weights, unique, blk)
    Ap = _matmul._workspace.get("A", h.dtype, a_size)  # gemm's packing buffer
    return encoder_layered(np.ascontiguousarray(h), T, plans, starts, lens, bias, apps,
                           cfg.num_attention_heads, float(cfg.layer_norm_eps), *stacked, att,
                           Ap)


def _stacked_weights(weights, unique, blk):
    # encoder_by_sequence's and encoder_layered's weights: for each of q|k|v, the attention
    # output, the FFN and its output, the packed panels [U, *] and bias [U, *] (and each
    # LayerNorm's gamma and beta), one row per distinct layer application (U = 1 when every
    # layer shares them: a view, no copy)
    def stack(arrays):  # (packed panels keep their cache-line start: aligned_empty_py)
        if len(arrays) == 1:
            return arrays[0][None]
        out = aligned_empty_py(len(arrays) * arrays[0].size, arrays[0].dtype)
        out = out.reshape((len(arrays),) + arrays[0].shape)
        out[...] = arrays
        return out

    P = weights.params
    attn, ffn = [n[0] for n in unique], [n[1] for n in unique]
    return (stack([weights.qkv(a)[0].panels(True, blk["qkv"]) for a in attn]),
            stack([weights.qkv(a)[1] for a in attn]),
            stack([weights[a + "dense.weight"].panels(True, blk["out"]) for a in attn]),
            stack([P[a + "dense.bias"] for a in attn]),
            stack([P[a + "LayerNorm.weight"] for a in attn]),
            stack([P[a + "LayerNorm.bias"] for a in attn]),
            stack([weights[f + "ffn.weight"].panels(True, blk["ffn"]) for f in ffn]),
            stack([P[f + "ffn.bias"] for f in ffn]),
            stack([weights[f + "ffn_output.weight"].panels(True, blk["ffn_out"]) for f in ffn]),
            stack([P[f + "ffn_output.bias"] for f in ffn]),
            stack([P[f + "full_layer_layer_norm.weight"] for f in ffn]),
            stack([P[f + "full_layer_layer_norm.bias"] for f in ffn]))


def _unread_nan(y, rows, n):  # [len(rows), H] -> [n, H], NaN at the rows not made
    out = np.full((n, y.shape[1]), np.nan, dtype=y.dtype)
    out[rows] = y
    return out


def encoder_backward(dh, cache, grads, cfg):  # dh: [n, H] -> [n, H]
    # Walk the layer applications in reverse. With shared weights, attn_name/ffn_name are
    # the same for every application, so each application's backward ADDS its gradient
    # into the same grads[...] arrays: the gradient of a shared weight is the sum over
    # its L uses. (dense_backward and layernorm_bwd accumulate with +=.)
    weights = cache.weights  # the forward's packed matrices, reused here
    for attn_name, ffn_name, ca, cf in reversed(cache.layers):
        if ca.rows is not None:  # an application made for some rows: their gradient only
            dh = dh[ca.rows]
        da = ffn_block_backward(dh, cf, weights, grads, ffn_name, cfg)
        dh = attention_block_backward(da, ca, weights, grads, attn_name, cfg)
    return dh


# ------------------------------------------------------------------------------ pooler

def pooler_forward(first, params):  # first: [B, H] hidden state of [CLS] -> pooled [B, H]
    z, _ = dense_forward(first, params, POOLER)
    return tanh_forward(z.reshape(-1)).reshape(z.shape), first  # tanh(dense(first))


def pooler_backward(dpooled, pooled, first, params, grads):  # -> dfirst: [B, H]
    dz = tanh_backward(dpooled.reshape(-1), pooled.reshape(-1)).reshape(pooled.shape)
    return dense_backward(dz, first, params, grads, POOLER)


# ------------------------------------------------------------------------------ the model

class ModelCache(NamedTuple):  # what AlbertModel.encode keeps for encode_backward
    embeddings: EmbeddingsCache
    encoder: EncoderCache
    first: np.ndarray  # [B, H] the [CLS] rows the pooler read (None without a pooler)
    pooled: np.ndarray  # [B, H] its output
    B: int
    T: int
    seqs: Sequences
    rows: np.ndarray  # flat indices of the real tokens when packed, else None

class AlbertModel:
    """Embeddings, encoder, pooler. ``encode`` returns outputs and a cache;
    ``encode_backward(dseq, dpooled, cache, grads)`` adds into ``grads``.

    Every model class names its ``head`` and says whether it has a pooler; its parameters
    are exactly ``parameter_shapes(config)``: the body's (params.py) and its head's own
    (``head_shapes``), the names Hugging Face's class of that head has."""

    head = "base"
    pooled = True  # Hugging Face's add_pooling_layer

    @staticmethod
    def head_shapes(cfg):
        """name -> shape of the head's own parameters (AlbertModel has none)."""
        return {}

    @classmethod
    def parameter_shapes(cls, cfg):
        return dict(body_shapes(cfg, cls.pooled), **cls.head_shapes(cfg))

    def __init__(self, config, params=None, seed=0, dtype=np.float32):
        self.config = config if isinstance(config, AlbertConfig) else AlbertConfig(**config)
        if params is None:
            params = init_weights(self.parameter_shapes(self.config), self.config, seed, dtype)
        else:
            expected = self.parameter_shapes(self.config)
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
    # Run the last layer only on the rows the head reads: the masked positions and [CLS]
    # in pretraining with mlm_path="masked", [CLS] in sequence classification (the caller
    # of encode says which: ``read``). Every layer before it still runs on every row (the
    # last layer's keys and values need them all); from the last layer's attention output
    # on, the rows no head reads are not computed: the loss and every gradient are the
    # same, and last_hidden_state (and the last of hidden_states) holds NaN at those rows.
    # Not with output_attentions (every map is [B, N, T, T]). Off by default; the trainers
    # turn it on (chapter 10 times it).
    skip_unread = False
    _frozen = None

    def freeze(self):
        """Promise that the weights will not change (inference): the encoder's matrices are
        then packed for the GEMM once and kept for every later call, instead of once per
        forward pass — on a single sentence the packing costs as much as the products.
        And a forward pass keeps nothing for a backward (encoder_forward's ``keep``): each
        layer's activations are freed as the next one runs, as under torch's
        inference_mode. ``unfreeze()`` before training again (a frozen model would keep
        using the old packs, and its caches have nothing to go back through). Returns
        self."""
        self._frozen = Weights(self.params)
        return self

    def unfreeze(self):
        self._frozen = None
        return self

    @property
    def frozen(self):
        return self._frozen is not None

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

    def _read_rows(self, read, rows, B, T):
        """The rows of the encoder's [n, H] output the last layer makes (None: all), from
        ``read`` (flat positions of [B*T] the caller reads), with [CLS] when pooled."""
        if not self.skip_unread or read is None:
            return None
        read = np.asarray(read, dtype=np.int64).reshape(-1)
        if self.pooled:
            read = np.concatenate([read, np.arange(B, dtype=np.int64) * T])
        read = np.unique(read)
        if rows is not None:  # packed: positions among the real tokens
            at = np.searchsorted(rows, read)
            if np.any(at >= len(rows)) or np.any(rows[np.minimum(at, len(rows) - 1)] != read):
                raise ValueError("read: a position that is padding")
            read = at
        n = B * T if rows is None else len(rows)
        if len(read) == 0 or len(read) == n:
            return None
        return read

    def encode(self, input_ids, token_type_ids=None, attention_mask=None, drop=None,
               output_attentions=False, read=None, output_hidden_states=False):
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
        h, emb = embeddings_forward(params, cfg, input_ids, token_type_ids, drop, rows,
                                    self._frozen)
        h, hidden_states, enc = encoder_forward(h, params, cfg, seqs, drop, self._frozen,
                                                self._read_rows(None if output_attentions
                                                                else read, rows, B, T),
                                                keep=self._frozen is None or output_attentions,
                                                hidden=output_hidden_states)

        def padded(a):  # [n, H] -> [B, T, H]
            return scatter_rows(a, rows, B, T, self.dtype).reshape(B, T, -1)

        last = padded(h)
        out = {"last_hidden_state": last, "pooler_output": None, "hidden_states": None}
        if hidden_states is not None:  # (the last of them is h: scattered once)
            out["hidden_states"] = [padded(s) for s in hidden_states[:-1]] + [last]
        first = pooled = None
        if self.pooled:  # tanh(dense(hidden state of [CLS]))
            first = np.ascontiguousarray(h[seqs.starts] if seqs.packed else
                                         h.reshape(B, T, -1)[:, 0])  # [B, H]
            pooled, _ = pooler_forward(first, params if self._frozen is None else self._frozen)
            out["pooler_output"] = pooled
        if output_attentions:
            out["attentions"] = [c.attention.probs for c in enc.layers]
        return out, ModelCache(emb, enc, first, pooled, B, T, seqs, rows)

    def encode_backward(self, dseq, dpooled, cache, grads):
        # dseq: [B*T, H] (or None), dpooled: [B, H] (or None) -> grads +=
        if len(cache.encoder.layers) < self.config.num_hidden_layers:
            raise RuntimeError("this forward pass kept nothing for a backward: the model is "
                               "frozen (inference, as Predictor leaves it); call "
                               "model.unfreeze() before training it")
        B, T, seqs, rows = cache.B, cache.T, cache.seqs, cache.rows
        H = self.config.hidden_size
        n = B * T if rows is None else len(rows)
        if dseq is None:
            dh = np.zeros((n, H), self.dtype)
        elif rows is None:
            dh = dseq.reshape(n, H).copy()
        else:  # padded positions are constants (zeros) when packed: their gradient drops
            dh = dseq.reshape(B * T, H)[rows]
        if dpooled is not None:
            dfirst = pooler_backward(dpooled, cache.pooled, cache.first, self.params, grads)
            if seqs.packed:
                dh[seqs.starts] += dfirst
            else:
                dh.reshape(B, T, H)[:, 0] += dfirst
        dh = encoder_backward(dh, cache.encoder, grads, self.config)
        embeddings_backward(dh, cache.embeddings, self.params, grads, self.config)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                output_attentions=False, output_hidden_states=False, **_):
        """AlbertModel's outputs: last_hidden_state [B,T,H], pooler_output [B,H]; on
        request, as Hugging Face's: hidden_states (L*inner + 1 of [B,T,H]: the embeddings'
        output, then each layer application's; None unless asked for) and attentions."""
        return self.encode(input_ids, token_type_ids, attention_mask, None, output_attentions,
                           output_hidden_states=output_hidden_states)


def scatter_rows(x, rows, B, T, dtype):
    """[len(rows), C] -> [B*T, C], row i to flat position rows[i], zeros elsewhere (x as it
    is when rows is None)."""
    if rows is None:
        return x
    out = np.zeros((B * T, x.shape[1]), dtype)
    out[rows] = x
    return out
