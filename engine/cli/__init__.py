"""The command line: parsing, dispatch and one-line errors (:mod:`engine.cli.main`), one module per
command group. Holds no engine logic; nothing else imports it.
"""
