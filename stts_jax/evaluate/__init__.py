"""Video-QA evaluation: multiple-choice accuracy per question family (`multiple_choice`), test-time scaling, the CLI."""
