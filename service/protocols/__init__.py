"""Wire protocols other clients already speak, each translated to the one scoring path
(`service.predict_route.Scoring`).

`hf`: the Hugging Face text-classification shape at `POST /`, what
`huggingface_hub.InferenceClient` sends. `v2`: the Open Inference Protocol
(KServe V2) REST API, what KServe, Triton and MLServer clients send, with the
binary tensor extension decoded by `v2_binary`.
"""
