"""The built-in verifier plugins, installed as `verirl.verifiers` and found through the `verirl.verifiers` entry-point group."""
