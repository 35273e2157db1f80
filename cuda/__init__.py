"""Kernel sources (installed as ``exodus.cuda``); read at run time by exodus.backends."""
