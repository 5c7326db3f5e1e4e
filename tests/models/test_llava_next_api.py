"""mmjax.load opens a LLaVA-NeXT checkpoint by its architecture; llm.logits equals transformers."""

import numpy as np

import mmjax
from mmjax.models.llava_next import LlavaNextForConditionalGeneration
from tiny_llava_next import checkpoint, hf_processor, images, reference_logits, relative_error

PROMPT = "USER: <image>\nWhat is shown here? <image>\nAnd here? ASSISTANT:"


def test_load_and_logits_equal_transformers_pipeline():
    llm = mmjax.load(checkpoint("vicuna"), limit_mm_per_prompt={"image": 2})
    assert llm.model_config.model_cls is LlavaNextForConditionalGeneration
    pictures = images([(7, 90), (60, 31)], seed=5)
    token_ids, logits = llm.logits({"prompt": PROMPT, "multi_modal_data": {"image": pictures}})
    reference = hf_processor("vicuna")(text=PROMPT, images=pictures, return_tensors="np")
    np.testing.assert_array_equal(token_ids, reference["input_ids"][0])
    want = reference_logits("vicuna", reference["input_ids"], reference["pixel_values"], reference["image_sizes"])[0]
    assert relative_error(logits, want) < 1e-4
