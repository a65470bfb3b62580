"""A character-level language model with truncated backpropagation through time.

The model reads text one character at a time and predicts the next one: each character's
id looks up a learned vector in an ``Embedding`` (the table's rows train with the rest; no
one-hot encoding), an ``LSTM`` turns the characters so far into a state, and a ``Linear``
layer maps the output at every step to one score (logit) per character of the vocabulary.
The loss is softmax cross-entropy against the actual next character, in nats per
character, averaged; Adam trains it, with the gradient norm clipped
(``clstm.clip_grad_norm``) so that a rare exploding gradient cannot wreck the weights.

The text ships with Python: the help texts behind ``help("for")`` & co.
(``pydoc_data.topics``, ~460 kB of the Language Reference in plain text), or, if a
stripped-down Python lacks them, the Zen of Python (the ``this`` module, repeated: too short
to hold anything out, so the "held-out" loss then measures memorisation). No download.

**Truncated BPTT.** The text is one long stream. It is cut into ``B`` equal streams read
side by side (the batch), and each stream is walked in consecutive chunks of ``T``
characters. Backpropagating through the whole stream at once would need the activations of
every step in memory; instead each chunk is one training step:

    state = None                                           # zeros at the start of an epoch
    for ids, target in chunks:                             # ids, target (T, B) ints
        x, emb_backward = embedding.forward_train(ids)         # x (T, B, E)
        (y, state), backward = lstm.forward_train(x, state)    # starts from the carried state
        loss, dlogits = clstm.cross_entropy(head(y), target)
        dx, _ = backward(dy)                               # dy: dloss/dy, through the head;
                                                           # no dstate: the gradient stops here
        emb_backward(dx)                                   # into the rows of the chunk's ids
        ...optimiser step...

The *values* of ``(h, c)`` flow on from one chunk to the next, so the model reads the
stream without forgetting at chunk boundaries and can use context older than ``T``; the
*gradients* are cut there (``backward`` is not given a gradient for the final state, and its
``dh0, dc0`` are thrown away), so each step costs ``O(T)`` however long the text. The price:
the model learns dependencies of at most ``T`` steps from any one gradient.

For comparison the script prints the **unigram entropy**: the loss of the best model that
ignores context and predicts every character from its overall frequency. A model that
learnt anything about spelling, words and syntax goes well below it; the script reports the
loss on held-out text (the last 5%, never trained on) too. Then it samples text from the
model, one character at a time, feeding each sample back in.

    python examples/char_lm.py            # the whole text, 5 epochs: ~40 s on 2 cores
    python examples/char_lm.py --quick    # a few seconds: 50,000 characters, 3 epochs
"""
import argparse
import contextlib
import io
import math
import sys
import time

import numpy as np

import clstm


def load_text():
    """(name, text): Python's own help texts, else the Zen of Python."""
    try:
        from pydoc_data.topics import topics
        return "pydoc_data.topics (Python's help() texts)", \
            "\n".join(topics[key] for key in sorted(topics))
    except ImportError:
        import codecs
        with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
            import this
        return "the Zen of Python (this.s)", codecs.decode(this.s, "rot13")


def progress(fraction, text, width=30):
    """One line of a text progress bar, redrawn in place with \\r."""
    done = int(width * fraction)
    sys.stdout.write(f"\r[{'#' * done}{'.' * (width - done)}] {int(100 * fraction):3d}% {text}")
    sys.stdout.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="part of the text, fewer epochs: a few seconds")
    parser.add_argument("--epochs", type=int, default=None, help="default 5 (quick: 3)")
    parser.add_argument("--chars", type=int, default=None,
                        help="characters of text to use (default: all; quick: 50000)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=32, help="character vector size")
    parser.add_argument("--batch", type=int, default=16, help="parallel streams B")
    parser.add_argument("--bptt", type=int, default=50, help="chunk length T")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--clip", type=float, default=5.0, help="max gradient norm")
    parser.add_argument("--temperature", type=float, default=0.7, help="for sampling")
    parser.add_argument("--sample", type=int, default=400, help="characters to sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    epochs = args.epochs or (3 if args.quick else 5)
    n_chars = args.chars or (50_000 if args.quick else None)
    rng = np.random.default_rng(args.seed)

    # The text, as integer codes; the last 5% is held out.
    source, text = load_text()
    if len(text) < 20_000:  # the Zen: repeat it, or there is hardly a chunk to train on
        repeats = -(-20_000 // len(text))
        source, text = f"{source} repeated {repeats} times", text * repeats
    text = text[:n_chars]
    vocab = sorted(set(text))
    V = len(vocab)
    code = {ch: i for i, ch in enumerate(vocab)}
    data = np.array([code[ch] for ch in text])
    n_val = max(len(data) // 20, 2)
    train, val = data[:-n_val], data[-n_val:]

    # The baseline: unigram entropy of the training text, in nats per character.
    freq = np.bincount(train, minlength=V) / len(train)
    unigram = float(-np.sum(freq[freq > 0] * np.log(freq[freq > 0])))

    # B streams side by side, time-major: streams[t, b] is stream b's t-th character.
    B, T = args.batch, args.bptt
    n_steps = len(train) // B
    streams = train[:n_steps * B].reshape(B, n_steps).T
    n_chunks = (n_steps - 1 + T - 1) // T

    embedding = clstm.Embedding(V, args.embedding, seed=args.seed + 2)
    lstm = clstm.LSTM(args.embedding, args.hidden, seed=args.seed)
    head = clstm.Linear(args.hidden, V, seed=args.seed + 1)
    model = [embedding, lstm, head]
    opt = clstm.optim.Adam(model, lr=args.lr)
    print(f"text: {source}, {len(text)} characters, {V} distinct; {len(train)} train, "
          f"{len(val)} held out")
    print(f"model: {embedding!r} -> {lstm!r} -> {head!r}; {B} streams, chunks of {T} steps "
          f"(truncated BPTT), Adam lr {args.lr:g}, clip {args.clip:g}")
    print(f"unigram entropy: {unigram:.3f} nats/char (the loss of predicting from character "
          f"frequencies alone)")

    start = time.perf_counter()
    recent = []
    for epoch in range(1, epochs + 1):
        state = None                      # zeros at the start of each pass over the text
        for k, t0 in enumerate(range(0, n_steps - 1, T)):
            t1 = min(t0 + T, n_steps - 1)
            ids, target = streams[t0:t1], streams[t0 + 1:t1 + 1]
            opt.zero_grad()
            x, emb_backward = embedding.forward_train(ids)
            (y, state), lstm_backward = lstm.forward_train(x, state)  # carry (h, c) in
            logits, head_backward = head.forward_train(y)
            loss, dlogits = clstm.cross_entropy(logits, target)
            dx, _ = lstm_backward(head_backward(dlogits))   # dstate=None: gradients stop at t0
            emb_backward(dx)
            clstm.clip_grad_norm(model, args.clip)
            opt.step()
            recent = (recent + [loss])[-50:]
            if k % 5 == 0 or k == n_chunks - 1:
                progress((k + 1) / n_chunks, f"epoch {epoch}/{epochs}  loss {np.mean(recent):.3f}"
                         f" nats/char  {time.perf_counter() - start:.0f} s")
        print()
    train_loss = float(np.mean(recent))   # the last (up to) 50 chunks' mean

    # Held-out loss: the held-out text as one stream, from a zero state.
    x_val = embedding(val[:-1, None])
    y, _ = lstm(x_val)
    val_loss, _ = clstm.cross_entropy(head(y), val[1:, None])
    # The trained LSTM frozen with bfloat16 and int8 weights (inference snapshots): the
    # held-out loss each gives against float32's (embedding and head stay float32).
    for fmt in ("bfloat16", "int8"):
        y_q, _ = lstm.freeze(weights=fmt)(x_val)
        loss_q, _ = clstm.cross_entropy(head(y_q), val[1:, None])
        print(f"held-out loss with {fmt} LSTM weights: {loss_q:.4f} nats/char "
              f"({(loss_q / val_loss - 1) * 100:+.2f}% against float32's {val_loss:.4f})")

    # Sampling: feed each sampled character back in, carrying the state.
    prompt = "".join(ch for ch in "The " if ch in code) or text[0]
    y, state = lstm(embedding([[code[ch]] for ch in prompt]))
    out = []
    for _ in range(args.sample):
        logits = head(y[-1, 0]) / args.temperature
        p = np.exp(logits - logits.max())
        nxt = rng.choice(V, p=p / p.sum())
        out.append(vocab[nxt])
        y, state = lstm(embedding([[nxt]]), state)
    print(f"--- sample (temperature {args.temperature:g}) ---")
    print(prompt + "".join(out))
    print("---")

    ok = max(val_loss, train_loss) < 0.9 * unigram   # "well below": at least 10% below
    print(f"final training loss (last 50 chunks) {train_loss:.3f}, held-out loss "
          f"{val_loss:.3f}, unigram entropy {unigram:.3f} nats/char "
          f"({train_loss / math.log(2):.2f}, "
          f"{val_loss / math.log(2):.2f} and {unigram / math.log(2):.2f} bits/char); "
          f"{time.perf_counter() - start:.0f} s")
    print(f"RESULT char_lm={'PASS' if ok else 'FAIL'} final_loss={train_loss:.4f} "
          f"val_loss={val_loss:.4f} unigram_entropy={unigram:.4f} unit=nats")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
