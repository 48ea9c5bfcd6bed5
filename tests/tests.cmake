# one line per suite; each module adds its own
sqz_test(test_tokenizer test_tokenizer.cpp LIBS sqz_tokenizer)
sqz_test(test_kernels_cpu test_kernels_cpu.cpp LIBS sqz_kernels sqz_model)
sqz_test(test_sampler test_sampler.cpp LIBS sqz_engine)
sqz_test(test_models_e2e test_models_e2e.cpp LIBS sqz_engine)
sqz_test(test_model_files test_model_files.cpp LIBS sqz_model)
sqz_test(test_quantizer test_quantizer.cpp LIBS sqz_quantize)
sqz_test(test_packed test_packed.cpp LIBS sqz_engine sqz_quantize)
