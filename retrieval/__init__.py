"""Retrieval and the grounded advisor (see docs/retrieval.md).

Modules, from the bottom up (nothing is imported here, so ``import retrieval`` stays cheap and
Chroma/LangChain load only when used):

- ``embeddings``  offline text encoders (default: shipped TF-IDF + SVD), ``load_encoder``
- ``chunking``    reading Markdown/text/PDF documents and cutting them into chunks
- ``store``       Chroma client factory, the registered embedding function, re-indexing
- ``knowledge``   ``KnowledgeBase``: ingest and search procedures
- ``cases``       ``CaseIndex``: similar resolved cases
- ``redaction``   ``Redactor``: personal data out before text leaves or is embedded
- ``injection``   ``detect_injection`` and ``wrap_untrusted`` for untrusted case text
- ``facts``       what a suggestion may mention: ids, amounts, quantities, dates of a case
- ``contract``    ``check_suggestion``: the output contract
- ``prompts``     loading the versioned prompt files of the ``prompts`` package
- ``advice``      ``AdviceRequest``, the ``Advisor`` protocol, ``AdvisorConfig``
- ``offline``     ``OfflineAdvisor``: rules and templates, no model
- ``llm``         ``LLMAdvisor``: ChatOpenAI, retries, repair, fallback
- ``service``     ``RetrievalService``/``RetrievalConfig``: the facade for the pipeline
"""
