# Turns a text file into a C header with one NUL-terminated byte array.
# cmake -DINPUT=file -DOUTPUT=header -DNAME=symbol -P embed.cmake
file(READ "${INPUT}" hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
file(WRITE "${OUTPUT}" "/* Generated from ${INPUT}; do not edit. */\nstatic const char ${NAME}[] = {${bytes}0x00};\n")
