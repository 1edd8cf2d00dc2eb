"""Evaluation: per-file metrics, their means, and the self-contained HTML report (``socodec eval``).

Needs the ``[eval]`` extra (pesq, pystoi, scipy, matplotlib; speechmos, Resemblyzer, pocketsphinx
and jiwer for the independent metrics); those are imported only by the functions that use them,
and ``import socodec`` never imports this package.

* :mod:`~socodec.evaluate.run`: files, folders, globs and manifests -> items; analysis-synthesis at
  each stream count through the codec's batch path, and the metrics of each
* :mod:`~socodec.evaluate.metrics`: PESQ, STOI, ESTOI, log-mel distance, SI-SDR, MR-STFT distance;
  means with bounded 95 % confidence intervals
* :mod:`~socodec.evaluate.independent`: DNSMOS, Resemblyzer speaker similarity, pocketsphinx WER
* :mod:`~socodec.evaluate.report`: ``metrics.csv``, ``metrics.json``, the figures and ``report.html``
"""
