/* Prints the effective uid it runs with: a setuid-root copy prints 0 where setuid works. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("%u\n", (unsigned)geteuid());
    return 0;
}
