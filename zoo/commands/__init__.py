"""The zoo's commands beside fit / validate / test / predict: each module has ``main(argv)``, imported only
when its command runs, so `zoo --help` stays quick."""
