"""
The account store: the ``cx`` account files, their tokens and their refresh.
"""
