"""The settings of a run: what `minialbert pretrain` and `minialbert finetune` take, each
field with its default, help, parser and choices in one place. The command-line options
are made from these fields (options.add_settings), the run folder saves them, a resumed
run continues with them (only the RESUMABLE ones may change). Imports nothing above the
first rung of the ladder.
"""
from dataclasses import dataclass, field

from .config import PRESETS
from .optim import OPTIMIZERS
from .options import (fraction, nonneg_int, positive_float, positive_int, setting, shared,
                      unit_interval)


@dataclass
class PretrainConfig:
    """The settings of a pretraining run; each with help is an option of ``minialbert
    pretrain`` (options.add_settings)."""
    out: str = setting("runs/pretrain", "the run folder: checkpoints, log.jsonl, "
                       "summary.json, curves.png")
    corpus: list = setting(None, "text files or folders of .txt files (none: the embedded "
                           "Python docs)")
    format: str = setting("auto", "lines: a sentence per line, blank line between "
                          "documents; text: wrapped prose, a paragraph per document",
                          choices=["auto", "lines", "text"])
    preset: str = setting("small", "the model's sizes", choices=sorted(PRESETS))
    config: str = setting(None, "a model config.json instead of the preset")
    tokenizer: str = setting(None, "a folder with spiece.model (none: train one on the corpus)")
    vocab_size: int = setting(4000, "pieces of the tokenizer trained on the corpus",
                              positive_int)
    seq_len: int = shared("seq_len", 64, "tokens per instance, [CLS] and [SEP]s included")
    batch_size: int = shared("batch_size", 64, "instances per step")
    micro_batches: int = shared("micro_batches", 1, "split each batch into this many "
                                "(gradient accumulation); must divide --batch-size")
    steps: int = setting(None, "steps to train (none: as many as fit in --time-budget)",
                         positive_int)
    time_budget: float = setting(600.0, "seconds, when --steps is not given", positive_float)
    lr: float = shared("lr", 5e-3)
    warmup: float = shared("warmup", 0.05)
    schedule: str = setting("albert", "albert: polynomial decay; hf: linear",
                            choices=["albert", "hf"])
    optimizer: str = setting("lamb", "the optimizer", choices=sorted(OPTIMIZERS))
    weight_decay: float = shared("weight_decay", 0.01)
    clip: float = shared("clip", 1.0)
    seed: int = shared("seed", 0, "seeds the weights, the data order, masking and dropout")
    threads: int = shared("threads", None)
    eval_every: int = setting(50, "evaluate on the held-out split every N steps (0: at the "
                              "end only)", nonneg_int)
    eval_batches: int = setting(16, "held-out batches per evaluation", positive_int)
    save_every: int = shared("save_every", 100)
    mlm_path: str = setting("masked", "masked: the MLM head on the masked positions only; "
                            "all: at every position (as Hugging Face computes it)",
                            choices=["masked", "all"])
    heldout_fraction: float = setting(0.1, "fraction of documents held out for evaluation",
                                      fraction)
    progress: bool = True  # --no-progress
    stop_after: int = None  # stop (and save) after this many steps: an interruption, for tests
    distributed: bool = setting(None, "data parallel over MPI even if no launcher is detected "
                                "(it is detected under mpiexec: mpiexec -n 2 minialbert "
                                "pretrain ...; needs pip install -e '.[mpi]')")
    deterministic: bool = setting(False, "add the micro-batches' gradients in a fixed order "
                                  "(1 rank and N ranks give the same bits; N times the "
                                  "traffic)")
    extra: dict = field(default_factory=dict)  # model config overrides (--set, --hidden-size)


# what a resumed run may change (said in the log); a change to the rest would make it
# another run, and is refused
PRETRAIN_RESUMABLE = ("steps", "lr", "warmup", "schedule", "clip", "weight_decay",
                      "eval_every", "eval_batches", "save_every", "micro_batches", "mlm_path")


@dataclass
class FinetuneConfig:
    """The settings of a fine-tuning run; each with help is an option of ``minialbert
    finetune`` (options.add_settings)."""
    out: str = setting("runs/finetune", "the run folder")
    task: str = setting("default", "default: the embedded task", choices=["default", "tsv",
                                                                          "squad"])
    train: str = setting(None, "training file (TSV or SQuAD JSON)")
    dev: str = setting(None, "evaluation file (TSV or SQuAD JSON)")
    regression: bool = setting(False, "TSV labels are numbers (one output, MSE)")
    text_column: str = setting(None, "TSV column of the text")
    pair_column: str = setting(None, "TSV column of the second text of a pair")
    label_column: str = setting(None, "TSV column of the label")
    init: str = setting("runs/pretrain", "pretrained weights: a minialbert run/checkpoint or a "
                        "Hugging Face folder")
    from_scratch: bool = setting(False, "random weights of --init's shape, with its tokenizer")
    seq_len: int = shared("seq_len", 128, "tokens per example")
    batch_size: int = shared("batch_size", 32, "examples per step")
    micro_batches: int = shared("micro_batches", 1, "split each batch (gradient accumulation)")
    epochs: float = setting(3.0, "passes over the training set", positive_float)
    # measured for the small pretrained preset (chapter 11); albert-base: 1e-5..5e-5
    lr: float = shared("lr", 1e-3)
    warmup: float = shared("warmup", 0.1)
    schedule: str = setting("hf", "albert: polynomial decay; hf: linear",
                            choices=["albert", "hf"])
    optimizer: str = setting("adamw", "the optimizer", choices=sorted(OPTIMIZERS))
    weight_decay: float = shared("weight_decay", 0.01)
    clip: float = shared("clip", 1.0)
    layerwise_lr_decay: float = setting(1.0, "learning rate x decay^(depth from the top) "
                                        "(1: off)", unit_interval)
    seed: int = shared("seed", 0, "seeds the head, the data order and dropout")
    threads: int = shared("threads", None)
    eval_every: int = setting(None, "evaluate every N steps (none: each epoch's end)",
                              positive_int)
    save_every: int = shared("save_every", 100)
    doc_stride: int = setting(48, "SQuAD: tokens between windows of a long context",
                              positive_int)
    max_query_length: int = setting(32, "SQuAD: tokens kept of a question", positive_int)
    max_answer_length: int = 30
    heldout_fraction: float = 0.1  # the default task's dev split (pretraining's, by default)
    progress: bool = True  # --no-progress
    stop_after: int = None  # stop (and save) after this many steps: an interruption, for tests


FINETUNE_RESUMABLE = ("epochs", "lr", "warmup", "schedule", "clip", "weight_decay",
                      "eval_every", "save_every", "micro_batches", "layerwise_lr_decay")
