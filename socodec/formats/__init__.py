"""Token file formats, as bytes <-> plain fields (no :class:`~socodec.codes.Codes` here).

Each module reads and writes one format: :mod:`.soc` (ours, pickle-free) and :mod:`.pt`
(the published layout). :mod:`socodec.codes` turns the fields into validated ``Codes``.
A new format is a new module here plus its suffix in :data:`socodec.codes.TOKEN_SUFFIXES`.
"""
