"""HemoLens core: imaging, data, models, training, evaluation, explainability; never imports Streamlit."""
