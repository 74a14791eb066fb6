"""BlindTuner: training a softmax head on CKKS-encrypted features (TenSEAL / Microsoft SEAL).

The client holds the secret key, extracts features with a frozen backbone, encrypts them and sends
ciphertexts; the server holds only evaluation keys and trains the head on ciphertexts; the client decrypts
the result. Modules: ``ckks`` (parameters, keys, bytes), ``ops`` (exact-scale arithmetic), ``softmax``
(the polynomial softmax), ``packing`` (packed layouts and products), ``head`` (scaling, schedule, Nesterov
step), ``plain`` (numpy reference), ``naive`` (one-ciphertext-per-sample baseline), ``client``, ``server``,
``train`` (the protocol, top to bottom), ``features``, ``report`` (figures) and ``command``
(the ``encvit fhe-train`` subcommand).
"""
