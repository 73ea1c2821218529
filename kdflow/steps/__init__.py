"""The pipeline's steps as library functions: primitives and paths in, a dict of outputs back.

Each KFP component in components/ calls exactly one of these; so does the CLI when it runs a step
by hand, and so do the tests.
"""
