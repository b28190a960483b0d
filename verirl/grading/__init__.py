"""Checking answers: the engine behind the ``math_answer`` verifier.

- :mod:`verirl.grading.parse`: safe parser from LaTeX/plain math to sympy values;
- :mod:`verirl.grading.equiv`: equivalence of two parsed answers;
- :mod:`verirl.grading.extract`: final-answer extraction and the judge sandboxed workers run;
- :mod:`verirl.grading.steps`: splitting a solution into steps for process verifiers.

Importing this package imports none of them (``steps`` needs no sympy).
"""
