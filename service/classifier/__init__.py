"""The classifier: the routing decision (validate, tokenize, predict, bin) and the Kafka
service that applies it to the requests topic."""
