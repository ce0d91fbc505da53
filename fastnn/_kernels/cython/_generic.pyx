# All fastnn kernels (reference.py's names) compiled for the generic instruction set; setup.py gives this module its ISA flags.
# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, nonecheck=False
include "kernels.pxi"
