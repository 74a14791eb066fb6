"""BlindTuner: training a softmax head on CKKS-encrypted features (TenSEAL / Microsoft SEAL).

The client holds the secret key, extracts features with a frozen backbone, encrypts them and sends
ciphertexts; the server holds only public keys and trains the head on ciphertexts; the client decrypts
the result. Modules: ``ckks`` (parameters, keys, bytes), ``ops`` (exact-scale arithmetic), ``softmax``
(the polynomial softmax), ``packing`` (packed layouts and products), ``plain`` (numpy reference),
``naive`` (one-ciphertext-per-sample baseline), ``client``, ``server``, ``train`` (the protocol loop),
``features`` and ``command`` (the ``encvit fhe-train`` subcommand).
"""
