"""Method comparison by quality: ``python -m benchmarks.quality``, a resumable grid of recipe runs.

Each *cell* is one run of a recipe (a subprocess) for one method x task x base x seed:

* tasks (:mod:`.grid`): ``ner`` (CoNLL-2003, ``recipes/ner_lora.py``, test entity F1) and
  ``sentiment`` (Rotten Tomatoes, ``recipes/sentiment_adapter.py``, test accuracy);
* methods by name: ``full``, ``lora``, ``adalora`` (final rank budget equal to LoRA's),
  ``adapter-houlsby``, ``adapter-pfeiffer``, and any other registered peftkit method (it runs with
  the task's adapter settings, so new methods join the grid by name); ``NAME@int8`` / ``NAME@int4``
  runs a method on the 8-bit / 4-bit base;
* seeds (default 42 and 7).

Results are appended to a JSON file (default ``benchmarks/results/quality.json``) keyed by cell,
``ner/lora/fp32/seed42``, after every cell: a rerun skips finished cells and retries failed ones,
so an interrupted grid continues where it stopped. Each record holds the score (test and valid),
trainable and total parameters, the run's CPU-seconds (the subprocess and its children, from
``getrusage``) and wall seconds, and the size of the saved adapter (the whole model for ``full``).
:mod:`.report` turns the file into a Markdown table (mean over seeds) and a plot of score against
trainable parameters. ``--tiny`` runs the same machinery on a tiny random BERT and a few dozen
synthetic examples (seconds per cell; the test of resumability uses it).

Modules: :mod:`.grid` (cells and their recipe options), :mod:`.results` (the results file),
:mod:`.runner` (one cell as a subprocess), :mod:`.report`, :mod:`.tiny`, and ``__main__`` (the
command line).
"""
