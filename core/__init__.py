"""HemoLens core: imaging, data, models, training, evaluation and explainability.

Nothing in this package imports Streamlit; the dashboard is a thin layer over it.
"""
