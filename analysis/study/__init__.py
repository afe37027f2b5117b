"""The study behind analysis/REPORT.md: real lamd builds traced with lynshim and analysed with lynanalyze.

``python -m analysis.study --help`` (``make study`` runs it). One module per step: ``startup``,
``operations``, ``builds``, ``memory``, ``server``, ``quickwins``, ``report``; ``common`` has the rest.
"""
