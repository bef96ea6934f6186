"""`mobilec explore`: a bounded search over prune x factorize x quantize x format for the
smallest artifact within the budget, with its Pareto frontiers. A client of mobilec.api
(like mobilec.batch): it never runs the pipeline itself."""
