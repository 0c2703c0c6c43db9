# Warnings-as-errors and sanitizer flags for routemoe's own targets (never for third-party code).

add_library(routemoe_warnings INTERFACE)
target_compile_options(routemoe_warnings INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror -Wno-error=deprecated-declarations>
  $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings --compiler-options=-Wall,-Wextra,-Werror>)

if(ROUTEMOE_SANITIZE)
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>)
  add_link_options(-fsanitize=address,undefined)
endif()

# routemoe_target_defaults(<target>): warnings as errors for our own targets. (The include root
# and the feature macros come with routemoe_features, which routemoe_framework links publicly.)
function(routemoe_target_defaults target)
  target_link_libraries(${target} PRIVATE routemoe_warnings)
endfunction()
