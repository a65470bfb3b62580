"""An LSTM-Attention sequence classifier: does a sequence contain a pattern, and where?

The task (generated here, no download): sequences of 8 to 30 random tokens from a
vocabulary of 19 (id 0 is padding). Half of them contain the pattern ``3 7 5`` at a random
position; the other half do not contain it anywhere. The classifier must say which half a
sequence belongs to.

The model is the "LSTM with attention" of the literature (Yang et al. 2016's attention
pooling, also the classic attention-based sentiment classifier):

    tokens --Embedding--> vectors --LSTM--> hidden states h_t
           --AttentionPooling--> s = sum_t a_t h_t --Linear--> 2 logits --softmax

``AttentionPooling`` scores every step, ``u_t = tanh(W h_t + b)``, ``a = softmax_t(u_t . v)``,
and sums the hidden states with those weights; padded steps get weight 0 (it takes the
batch's ``lengths``, as the LSTM does). ``clstm.fit`` pads the list of sequences
(``clstm.data.pad_sequences``), passes each batch's lengths on, and trains with Adam on
the cross-entropy, with a validation split and an accuracy metric.

Nothing tells the model where the pattern is, but the weights ``a_t`` should learn to peak
at it: the LSTM's state right after reading ``3 7 5`` is what separates the classes. The
script checks that on held-out sequences (the share of positive sequences whose largest
weight falls on the pattern or the step after it, and the attention mass there against a
uniform spread) and plots the weights of a few sequences (if matplotlib is installed).

    python examples/attention_classifier.py            # 4000 sequences, 4 epochs
    python examples/attention_classifier.py --quick    # a few seconds
"""
import argparse
import sys
import time

import numpy as np

import clstm
from clstm.training import Metric, accuracy

PATTERN = np.array([3, 7, 5])
VOCAB = 20  # token ids 1..19; 0 pads


def contains(seq, pattern=PATTERN):
    k = len(pattern)
    return any(np.array_equal(seq[i:i + k], pattern) for i in range(len(seq) - k + 1))


def make_data(n, rng, min_len=8, max_len=30):
    """``n`` sequences (a list of int arrays), labels (1: has the pattern) and the
    pattern's start in each (-1 for none)."""
    seqs, labels, starts = [], np.arange(n) % 2, np.full(n, -1)
    for i in range(n):
        length = rng.integers(min_len, max_len + 1)
        seq = rng.integers(1, VOCAB, length)
        while contains(seq):  # a negative must not contain it by chance
            seq = rng.integers(1, VOCAB, length)
        if labels[i]:
            starts[i] = rng.integers(0, length - len(PATTERN) + 1)
            seq[starts[i]:starts[i] + len(PATTERN)] = PATTERN
        seqs.append(seq)
    return seqs, labels, starts


def attention_weights(model, x, lengths):
    """Run the model's first three modules to get the pooling's weights ``(B, T)``."""
    embedding, lstm, pool = model[0], model[1], model[2]
    h, _ = lstm(embedding(x), lengths=lengths)
    _, weights = pool(h, lengths=lengths)
    return weights


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sequences and epochs")
    parser.add_argument("--sequences", type=int, default=None,
                        help="training sequences (default 4000; quick: 1000)")
    parser.add_argument("--epochs", type=int, default=None, help="default 4 (quick: 2)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--embedding", type=int, default=16)
    parser.add_argument("--attention", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--out", default="attention_classifier.png", help="plot file (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_train = args.sequences or (1000 if args.quick else 4000)
    epochs = args.epochs or (2 if args.quick else 4)
    rng = np.random.default_rng(args.seed)

    seqs, labels, _ = make_data(n_train, rng)
    test_seqs, test_labels, test_starts = make_data(1000, rng)
    print(f"{n_train} training sequences of 8-30 tokens (vocabulary {VOCAB - 1}, 0 pads), "
          f"half with the pattern {' '.join(map(str, PATTERN))} somewhere; 1000 held out")

    H = args.hidden
    model = clstm.Sequential(
        clstm.Embedding(VOCAB, args.embedding, padding_idx=0, seed=args.seed),
        clstm.LSTM(args.embedding, H, batch_first=True, seed=args.seed + 1),
        clstm.AttentionPooling(H, args.attention, batch_first=True, seed=args.seed + 2),
        clstm.Linear(H, 2, seed=args.seed + 3))
    optimizer = clstm.optim.Adam(model, lr=args.lr)
    start = time.perf_counter()
    history = clstm.fit(model, clstm.cross_entropy, optimizer, seqs, labels, epochs=epochs,
                        batch_size=args.batch, validation=0.1, shuffle=rng,
                        callbacks=[Metric("accuracy", accuracy)])
    print(f"model: {model!r}\ntrained in {time.perf_counter() - start:.1f} s")

    x, lengths = clstm.data.pad_sequences(test_seqs, batch_first=True)
    test_acc = accuracy(clstm.predict(model, x, lengths=lengths), test_labels)
    weights = attention_weights(model, x, lengths)
    positive = np.flatnonzero(test_labels == 1)
    k = len(PATTERN)
    # the pattern's steps and the one after it: where the LSTM has just read it
    spans = [(test_starts[i], min(test_starts[i] + k + 1, lengths[i])) for i in positive]
    peaks = np.argmax(weights[positive], axis=1)
    on_pattern = float(np.mean([a <= p < b for p, (a, b) in zip(peaks, spans)]))
    mass = float(np.mean([weights[i, a:b].sum() for i, (a, b) in zip(positive, spans)]))
    uniform = float(np.mean([(b - a) / lengths[i] for i, (a, b) in zip(positive, spans)]))
    print(f"held-out accuracy {test_acc:.3f} (chance 0.5)")
    print(f"attention on held-out positives: the largest weight is on the pattern (or the "
          f"step after it) in {100 * on_pattern:.1f}% of them; mean weight there "
          f"{mass:.2f}, against {uniform:.2f} if spread evenly")

    if args.out:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib is not installed: skipping the plot")
        else:
            shown = positive[:4]
            fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.6 * len(shown)))
            for ax, i in zip(np.atleast_1d(axes), shown):
                n = lengths[i]
                colours = ["C3" if test_starts[i] <= t < test_starts[i] + k else "C0"
                           for t in range(n)]
                ax.bar(np.arange(n), weights[i, :n], color=colours)
                ax.set_xticks(np.arange(n))
                ax.set_xticklabels(test_seqs[i], fontsize=7)
                ax.set_ylim(0, 1)
                ax.set_ylabel("weight", fontsize=8)
            np.atleast_1d(axes)[0].set_title("attention weights per token (pattern in red)")
            fig.tight_layout()
            fig.savefig(args.out, dpi=100)
            plt.close(fig)
            print(f"plot written to {args.out}")

    ok = test_acc > 0.9 and on_pattern > 0.8
    print(f"RESULT attention_classifier={'PASS' if ok else 'FAIL'} accuracy={test_acc:.4f} "
          f"chance=0.5 peak_on_pattern={on_pattern:.4f} attention_mass={mass:.4f} "
          f"uniform_mass={uniform:.4f} val_accuracy={history['val_accuracy'][-1]:.4f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
