"""Evaluation: per-file metrics, their means, and the self-contained HTML report (``socodec eval``).

Needs the ``[eval]`` extra (pesq, pystoi, scipy, matplotlib); those are imported only by the
functions that use them, and ``import socodec`` never imports this package.

* :mod:`~socodec.evaluate.run`: files, folders, globs and JSONL manifests -> items
* :mod:`~socodec.evaluate.metrics`: PESQ, STOI, ESTOI, log-mel distance, SI-SDR, MR-STFT distance
* :mod:`~socodec.evaluate.run`: analysis-synthesis at each stream count through the codec's batch path
* :mod:`~socodec.evaluate.metrics`: means with 95 % confidence intervals
* :mod:`~socodec.evaluate.report`: ``metrics.csv`` and ``metrics.json``
* :mod:`~socodec.evaluate.report`, :mod:`~socodec.evaluate.report`: ``report.html``
"""
